"""llama.vim, the llama.cpp project's Neovim plugin, unchanged, against our `/infill`.

The plugin is loaded from the pinned copy named by LLAMA_VIM (never copied into the
repository) into a real headless Neovim driven over its RPC API like a user at the keyboard:
open a Python buffer, type inside a function body, wait for llama.vim's ghost text (its
extmark), accept it with its Tab mapping, and check the buffer: the suggestion must stop at
the end of the block the cursor is in (`n_indent`), and the plugin's info line must show the
prompt and generation figures it reads from `response_fields` (zeros when the fields are
missing).

Run by tests/e2e/llama_vim.rs with NVIM, LLAMA_VIM, HEXACODER_URL,
HEXACODER_E2E_FILE and HEXACODER_E2E_MODE (`scripted`: the scripted model, exact text; `real`:
a real FIM model, the block rule only). Prints "llama.vim e2e ok" and exits 0 on success.
"""

import os
import re
import sys
import time

import pynvim

INDENT = "    "
TYPED = {
    # The scripted model writes `gc`, then `\nimport gc` lines at column 0.
    "scripted": f"{INDENT}x = ",
    # Any model continues the call and, most likely, the body after it.
    "real": f"{INDENT}with open(path, ",
}


def wait(what, condition, timeout, state=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"FAILED: timed out after {timeout} s waiting for {what}\n{state()}")


def main():
    nvim = pynvim.attach(
        "child",
        argv=[os.environ["NVIM"], "--embed", "--headless", "-u", "NONE", "-i", "NONE", "-n",
              "--cmd", f"set rtp^={os.environ['LLAMA_VIM']}"],
    )
    try:
        run(nvim, os.environ["HEXACODER_E2E_MODE"])
    finally:
        try:
            nvim.command("qall!", async_=True)
        except Exception:
            pass
        nvim.close()


def messages(nvim):
    return nvim.exec_lua("return vim.fn.execute('messages')")


def ghost_text(nvim):
    """The hint's first line and the lines below it, from llama.vim's `vt_fim` extmarks, or
    None while there is no acceptable hint."""
    marks = nvim.exec_lua(
        "local ns = vim.api.nvim_create_namespace('vt_fim'); "
        "return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {details = true})"
    )
    first, below, info = None, [], ""
    for _, _, _, details in marks:
        if details.get("virt_text"):
            chunks = details["virt_text"]
            first = chunks[0][0]
            info = "".join(chunk[0] for chunk in chunks[1:])
        for line in details.get("virt_lines") or []:
            below.append("".join(chunk[0] for chunk in line))
    if first is None or not (first.strip() or below):
        return None
    return first, below, info


def run(nvim, mode):
    typed = TYPED[mode]
    # The plugin's defaults but the endpoint: 250 ms budgets, response_fields, n_indent,
    # ring-buffer chunks warming the cache.
    nvim.vars["llama_config"] = {"endpoint_fim": os.environ["HEXACODER_URL"] + "/infill",
                                 "show_info": 2}
    # The pinned copy lacks autoload/llama_debug.vim, the optional debug pane, so its log
    # calls fail (E117) and, outside `abort` functions, go on as Vim script does.
    nvim.command("silent! call llama#init()")
    path = os.environ["HEXACODER_E2E_FILE"]
    nvim.command(f"edit {path}")
    before = nvim.current.buffer[:]
    # A new line at the end of the last function, then the user types the code.
    nvim.api.win_set_cursor(0, (len(before), 0))
    nvim.input("A<CR>" + typed.replace("<", "<lt>"))
    row = len(before) + 1
    wait("the typed text", lambda: nvim.current.buffer[row - 1] == typed, 10,
         state=lambda: f"buffer: {nvim.current.buffer[:]}")
    hint = wait("llama.vim's ghost text", lambda: ghost_text(nvim), 120,
                state=lambda: f"buffer: {nvim.current.buffer[:]}, messages: {messages(nvim)}")
    first, below, info = hint
    # The info line reads timings/prompt_n and timings/predicted_n through response_fields.
    figures = re.search(r"\| p: (\d+) \(.*\| g: (\d+) \(", info)
    if not figures or int(figures.group(1)) == 0 or int(figures.group(2)) == 0:
        sys.exit(f"FAILED: llama.vim's info line has no timings: {info!r}")
    if mode == "scripted" and (first, below) != ("gc", []):
        sys.exit(f"FAILED: expected the hint 'gc' alone (the block ends after it), got {hint}")

    nvim.input("<Tab>")
    wait("the accepted text", lambda: nvim.current.buffer[row - 1] == typed + first, 10,
         state=lambda: f"buffer: {nvim.current.buffer[:]}")
    after = nvim.current.buffer[:]
    if after[:len(before)] != before:
        sys.exit(f"FAILED: the lines above the cursor changed: {after}")
    inserted = after[row - 1:]
    if inserted != [typed + first] + below:
        sys.exit(f"FAILED: the buffer has {inserted}, the hint was {[typed + first] + below}")
    # Every line of the suggestion after the first stays in the block: indented at least as
    # deep as the cursor's line. llama-server keeps the indentation of the line it cut, so
    # the last line may be that indentation alone.
    for index, line in enumerate(below):
        last = index == len(below) - 1
        if not line.startswith(INDENT) and not (last and line.strip() == ""):
            sys.exit(f"FAILED: the suggestion ran past the block's end: {inserted}")
    mode_now = nvim.api.get_mode()["mode"]
    if mode_now != "i":
        sys.exit(f"FAILED: accepting left insert mode ({mode_now})")
    version = nvim.exec_lua("local v = vim.version(); return v.major .. '.' .. v.minor .. '.' .. v.patch")
    print(f"llama.vim e2e ok: Neovim {version}, {mode}, accepted {inserted}, info {info.strip()!r}")


if __name__ == "__main__":
    main()
