-- :checkhealth hexacoder

local M = {}

local health = vim.health or require('health')
local ok = health.ok or health.report_ok
local warn = health.warn or health.report_warn
local error = health.error or health.report_error
local info = health.info or health.report_info
local start = health.start or health.report_start

function M.check()
  start('hexacoder')
  if vim.fn.has('nvim-0.7') == 1 then
    ok('Neovim ' .. tostring(vim.version().major) .. '.' .. tostring(vim.version().minor))
  else
    error('Neovim 0.7 or later is needed')
  end
  if vim.lsp.inline_completion then
    info('native inline completion (vim.lsp.inline_completion) is available')
  elseif vim.fn.has('nvim-0.10') == 1 then
    info('ghost text: inline virtual text')
  else
    info('ghost text: overlay virtual text (inline needs Neovim 0.10)')
  end
  local hexacoder = require('hexacoder')
  local config = hexacoder.config()
  local exe = config.cmd[1]
  if vim.fn.executable(exe) == 1 then
    ok('bridge: ' .. vim.fn.exepath(exe))
  else
    error('bridge not found: ' .. exe, { 'cargo build --release -p hexacoder-lsp, then put target/release on PATH or set cmd' })
  end
  local server = config.settings.serverUrl or 'http://127.0.0.1:8080'
  info('server: ' .. server .. ', two-step: ' .. tostring(config.settings.twoStep ~= false))
  local status = hexacoder.status()
  if status.state == 'disconnected' then
    warn('the bridge cannot reach the server: ' .. tostring(status.message))
  elseif status.state then
    ok('bridge status: ' .. status.state)
  end
end

return M
