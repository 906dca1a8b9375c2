-- HexaCoder for Neovim: starts hexacoder-lsp, shows its suggestions as ghost text, and
-- accepts them together with their imports edit.
--
-- Neovim 0.12 has native inline completion (vim.lsp.inline_completion), which this plugin
-- enables there. Older versions (0.7 and later) get ghost text drawn with extmarks: inline
-- virtual text on 0.10+, overlay text before that, and virtual lines below.

local M = {}

local defaults = {
  -- The bridge executable and its arguments.
  cmd = { 'hexacoder-lsp' },
  filetypes = { 'python', 'c', 'cpp', 'javascript', 'javascriptreact', 'typescript',
    'typescriptreact', 'go', 'java', 'rust' },
  -- Sent to the bridge as initializationOptions (see :help hexacoder-settings).
  settings = {},
  -- Ask for a suggestion as you type; otherwise only through :HexacoderSuggest.
  auto_trigger = true,
  -- Insert-mode keys; false disables one.
  keymaps = { accept = '<Tab>', accept_line = '<M-l>', dismiss = '<C-]>' },
  -- Use Neovim's own inline completion where it exists (0.12+).
  native = true,
  highlight = 'Comment',
}

local config = vim.deepcopy(defaults)
local namespace = vim.api.nvim_create_namespace('hexacoder')
-- The suggestion on screen: { bufnr, row, col, text, item, client_id, id }.
local current = nil
-- The request in flight: { client, request_id }.
local pending = nil
local timer = nil
local status = { state = 'starting' }
local enabled = true

local function has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

local function clients(bufnr)
  if vim.lsp.get_clients then
    return vim.lsp.get_clients({ bufnr = bufnr, name = 'hexacoder' })
  end
  local found = {}
  for _, client in pairs(vim.lsp.buf_get_clients(bufnr)) do
    if client.name == 'hexacoder' then
      table.insert(found, client)
    end
  end
  return found
end

local function client_for(bufnr)
  return clients(bufnr)[1]
end

local function native_available()
  return config.native and vim.lsp.inline_completion ~= nil
end

local function notify_event(method, id, bufnr)
  local client = client_for(bufnr or 0)
  if client and id then
    client.notify(method, { id = id })
  end
end

local function clear()
  if current then
    pcall(vim.api.nvim_buf_clear_namespace, current.bufnr, namespace, 0, -1)
  end
  current = nil
end

local function cancel()
  if pending then
    pcall(pending.client.cancel_request, pending.request_id)
    pending = nil
  end
  if timer then
    timer:stop()
  end
end

--- Dismisses the suggestion on screen (and tells the server it was rejected).
function M.dismiss()
  if current then
    notify_event('hexacoder/didRejectCompletion', current.id, current.bufnr)
  end
  cancel()
  clear()
end

local function byte_col(line, character, encoding)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  return ok and col or #line
end

local function show(bufnr, item, client)
  clear()
  local text = item.insertText
  if type(text) == 'table' then
    text = text.value
  end
  if not text or text == '' then
    return
  end
  local start = item.range and item.range.start or nil
  local cursor = vim.api.nvim_win_get_cursor(0)
  local row, col = cursor[1] - 1, cursor[2]
  if start then
    local line = vim.api.nvim_buf_get_lines(bufnr, start.line, start.line + 1, false)[1] or ''
    row, col = start.line, byte_col(line, start.character, client.offset_encoding)
  end
  local lines = vim.split(text, '\n', { plain = true })
  local mark = { virt_text = { { lines[1], config.highlight } }, hl_mode = 'combine' }
  mark.virt_text_pos = has('0.10') and 'inline' or 'overlay'
  if #lines > 1 then
    mark.virt_lines = {}
    for i = 2, #lines do
      table.insert(mark.virt_lines, { { lines[i], config.highlight } })
    end
  end
  vim.api.nvim_buf_set_extmark(bufnr, namespace, row, col, mark)
  local id = item.command and item.command.arguments and item.command.arguments[1]
    and item.command.arguments[1].id
  current = { bufnr = bufnr, row = row, col = col, text = text, item = item,
    client_id = client.id, id = id }
  notify_event('hexacoder/didShowCompletion', id, bufnr)
end

--- Asks the bridge for a suggestion at the cursor.
--- @param automatic boolean|nil typed (debounced by the bridge) rather than asked for
function M.suggest(automatic)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not client or not enabled then
    return
  end
  cancel()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = automatic and 2 or 1 }
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local ok, request_id = client.request('textDocument/inlineCompletion', params, function(err, result)
    pending = nil
    if err or not result then
      return
    end
    -- Drop answers for text that has changed since.
    if vim.api.nvim_buf_get_changedtick(bufnr) ~= tick or vim.api.nvim_get_current_buf() ~= bufnr then
      return
    end
    local items = result.items or result
    if items and items[1] then
      show(bufnr, items[1], client)
    end
  end, bufnr)
  if ok then
    pending = { client = client, request_id = request_id }
  end
end

--- Whether a suggestion is on screen.
function M.visible()
  return current ~= nil
end

--- The suggestion on screen, if any: { text = ..., added_imports = {...}, row = ..., col = ... }
--- (row and col 0-based, col in bytes: where the ghost text is anchored).
function M.suggestion()
  if not current then
    return nil
  end
  local args = current.item.command and current.item.command.arguments or {}
  return { text = current.text, added_imports = args[1] and args[1].addedImports or {},
    row = current.row, col = current.col }
end

local function insert(text, finished)
  local s = current
  local lines = vim.split(text, '\n', { plain = true })
  clear()
  vim.api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, s.col, lines)
  local last_row = s.row + #lines - 1
  local last_col = (#lines == 1 and s.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { last_row + 1, last_col })
  if finished and s.item.command then
    -- The bridge applies the imports edit through workspace/applyEdit and reports the accept.
    local client = vim.lsp.get_client_by_id(s.client_id)
    if client then
      client.request('workspace/executeCommand', s.item.command, function() end, s.bufnr)
    end
  end
end

--- Accepts the whole suggestion, with its imports edit. Returns false if there was none.
function M.accept()
  if not current then
    return false
  end
  insert(current.text, true)
  return true
end

--- Accepts the suggestion's first line; the rest stays on screen.
function M.accept_line()
  if not current then
    return false
  end
  local first, rest = current.text:match('^([^\n]*\n?)(.*)$')
  if rest == '' then
    return M.accept()
  end
  local s = current
  insert(first, false)
  local cursor = vim.api.nvim_win_get_cursor(0)
  local item = vim.deepcopy(s.item)
  item.insertText = rest
  item.range = nil
  show(s.bufnr, item, vim.lsp.get_client_by_id(s.client_id))
  -- The imports edit still comes with the final accept.
  current.row, current.col = cursor[1] - 1, cursor[2]
  return true
end

--- hexacoder-lsp's status (from `hexacoder/status`), for statuslines.
function M.status()
  return status
end

local function termcodes(keys)
  return vim.api.nvim_replace_termcodes(keys, true, false, true)
end

local function set_keymaps()
  local keys = config.keymaps or {}
  -- Expression mappings may not change text (textlock), so the action runs right after the
  -- mapping returns; with nothing to do, the key keeps its own meaning.
  local function map(lhs, action, available)
    if not lhs then
      return
    end
    vim.keymap.set('i', lhs, function()
      if available() then
        vim.schedule(action)
        return ''
      end
      return termcodes(lhs)
    end, { expr = true, silent = true, desc = 'HexaCoder' })
  end
  if native_available() then
    map(keys.accept, function()
      if not vim.lsp.inline_completion.get() then
        vim.api.nvim_feedkeys(termcodes(keys.accept), 'n', false)
      end
    end, function()
      return true
    end)
  else
    map(keys.accept, M.accept, M.visible)
    map(keys.accept_line, M.accept_line, M.visible)
  end
  map(keys.dismiss, M.dismiss, M.visible)
end

local function on_attach(client, bufnr)
  if native_available() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    return
  end
  local group = vim.api.nvim_create_augroup('hexacoder_buffer_' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ 'TextChangedI', 'TextChangedP' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      clear()
      if not config.auto_trigger then
        return
      end
      -- Coalesce bursts of changes; the bridge debounces further by typing speed.
      timer = timer or vim.loop.new_timer()
      timer:stop()
      timer:start(15, 0, vim.schedule_wrap(function()
        if vim.api.nvim_get_mode().mode:sub(1, 1) == 'i' then
          M.suggest(true)
        end
      end))
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      if current then
        M.dismiss()
      else
        cancel()
      end
    end,
  })
  vim.api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      if current then
        local cursor = vim.api.nvim_win_get_cursor(0)
        if cursor[1] - 1 ~= current.row or cursor[2] ~= current.col then
          M.dismiss()
        end
      end
    end,
  })
end

local function lsp_config()
  return {
    name = 'hexacoder',
    cmd = config.cmd,
    root_dir = vim.fn.getcwd(),
    init_options = config.settings,
    settings = { hexacoder = config.settings },
    -- Send every change at once, so that a request never sees stale text.
    flags = { debounce_text_changes = 0 },
    handlers = {
      ['hexacoder/status'] = function(_, result)
        status = result or status
      end,
    },
    on_attach = on_attach,
  }
end

local legacy_client_id = nil

local function attach(bufnr)
  if vim.lsp.start then
    vim.lsp.start(lsp_config(), { bufnr = bufnr })
    return
  end
  -- Neovim 0.7: one client, attached to each buffer.
  if not legacy_client_id or not vim.lsp.get_client_by_id(legacy_client_id) then
    legacy_client_id = vim.lsp.start_client(lsp_config())
  end
  if legacy_client_id then
    vim.lsp.buf_attach_client(bufnr, legacy_client_id)
  end
end

--- Sends changed settings to the running bridge.
function M.configure(settings)
  config.settings = vim.tbl_deep_extend('force', config.settings, settings or {})
  for _, client in ipairs(clients(nil)) do
    client.notify('workspace/didChangeConfiguration', { settings = { hexacoder = config.settings } })
  end
end

--- Sets HexaCoder up: options as in `defaults` above (see :help hexacoder-setup).
function M.setup(opts)
  config = vim.tbl_deep_extend('force', vim.deepcopy(defaults), opts or {})
  local group = vim.api.nvim_create_augroup('hexacoder', { clear = true })
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = config.filetypes,
    callback = function(args)
      attach(args.buf)
    end,
  })
  -- Buffers already open.
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.tbl_contains(config.filetypes, vim.bo[bufnr].filetype) then
      attach(bufnr)
    end
  end
  set_keymaps()
  vim.api.nvim_create_user_command('HexacoderSuggest', function()
    M.suggest(false)
  end, { desc = 'Ask HexaCoder for a suggestion at the cursor' })
  vim.api.nvim_create_user_command('HexacoderToggle', function()
    enabled = not enabled
    if not enabled then
      M.dismiss()
    end
    vim.notify('HexaCoder suggestions ' .. (enabled and 'on' or 'off'))
  end, { desc = 'Turn HexaCoder suggestions on or off' })
  vim.api.nvim_create_user_command('HexacoderSecureToggle', function()
    local two_step = config.settings.twoStep ~= false
    M.configure({ twoStep = not two_step })
    vim.notify('HexaCoder secure mode (two-step imports) ' .. (two_step and 'off' or 'on'))
  end, { desc = 'Turn two-step (secure imports) generation on or off' })
end

--- The effective configuration (for :checkhealth).
function M.config()
  return config
end

return M
