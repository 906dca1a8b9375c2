"""End to end in a real Neovim, driven over its RPC API like a user at the keyboard: open a
Python buffer, type, wait for the ghost text, accept it with the mapped key, and check the
buffer, including the added import. Typed keys go through Neovim's own input loop, so the
plugin's TextChangedI trigger and insert-mode mappings run as they do for a person.

Run by tests/e2e/bridge/neovim.rs with NVIM, HEXACODER_LSP_BIN, HEXACODER_URL and
HEXACODER_E2E_FILE set. Prints "e2e ok" and exits 0 on success.
"""

import os
import re
import sys
import time
from pathlib import Path

import pynvim

PLUGIN = Path(__file__).resolve().parent.parent
MESSAGES = "return vim.fn.execute('messages')"


def wait(what, condition, timeout=20.0, state=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    sys.exit(f"FAILED: timed out waiting for {what}\n{state()}")


def main():
    nvim = pynvim.attach(
        "child",
        argv=[os.environ["NVIM"], "--embed", "--headless", "-u", "NONE", "-i", "NONE", "-n",
              "--cmd", f"set rtp^={PLUGIN}"],
    )
    try:
        run(nvim)
    finally:
        try:
            nvim.command("qall!", async_=True)
        except Exception:
            pass
        nvim.close()


def run(nvim):
    nvim.command("filetype on")
    nvim.exec_lua(
        "local lsp, url = ...; require('hexacoder').setup({cmd = {lsp}, "
        "settings = {serverUrl = url, debounceMs = 0, maxTokens = 40}})",
        os.environ["HEXACODER_LSP_BIN"],
        os.environ["HEXACODER_URL"],
    )
    nvim.command(f"edit {os.environ['HEXACODER_E2E_FILE']}")
    lua = lambda code: nvim.exec_lua(code)  # noqa: E731
    wait("the bridge to attach", lambda: lua(
        "local c = vim.lsp.get_clients and vim.lsp.get_clients({bufnr = 0}) or vim.lsp.buf_get_clients(0); "
        "return vim.tbl_count(c) > 0"))
    # 1-2: on the empty third line, type `x = ` as a user would.
    nvim.api.win_set_cursor(0, (3, 0))
    nvim.input("ix = ")
    # 3: the ghost text.
    wait("the ghost text", lambda: lua("return require('hexacoder').visible()"))
    suggestion = lua("return require('hexacoder').suggestion()")
    if not suggestion["text"].startswith("gc"):
        sys.exit(f"FAILED: unexpected suggestion {suggestion}")
    if "import gc" not in suggestion["added_imports"]:
        sys.exit(f"FAILED: no added import in {suggestion}")
    marks = lua("return #vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_create_namespace('hexacoder'), 0, -1, {})")
    if marks != 1:
        sys.exit(f"FAILED: expected one ghost-text extmark, found {marks}")
    # 4: accept with the mapped key.
    nvim.input("<Tab>")
    # 5: the completion at the cursor, then the import once the bridge's applyEdit arrives.
    wait("the imports edit", lambda: nvim.current.buffer[1] == "import gc",
         state=lambda: f"buffer: {nvim.current.buffer[:]}, mode: {nvim.api.get_mode()}, "
                       f"messages: {nvim.exec_lua(MESSAGES)}")
    text = "\n".join(nvim.current.buffer[:])
    expected = "import abc\nimport gc\n\nx = " + suggestion["text"]
    if not text.startswith(expected):
        sys.exit(f"FAILED: buffer is\n{text}\nexpected it to start with\n{expected}")
    if text.count("import abc") != 1:
        sys.exit(f"FAILED: the import block was duplicated:\n{text}")
    # The accepted text leaves the screen. The insertion is a change in insert mode, so a
    # new suggestion may already be showing: then it is anchored at the cursor after the
    # accepted text, not where the accepted one was.
    after, cursor = lua("return {require('hexacoder').suggestion() or vim.NIL, "
                        "vim.api.nvim_win_get_cursor(0)}")
    if after is not None:
        anchor = (after["row"], after["col"])
        if anchor == (suggestion["row"], suggestion["col"]) or anchor != (cursor[0] - 1, cursor[1]):
            sys.exit(f"FAILED: ghost text still shown after accepting: {after}, "
                     f"cursor {cursor}, accepted {suggestion}")
    mode = nvim.api.get_mode()["mode"]
    if mode != "i":
        sys.exit(f"FAILED: accepting left insert mode ({mode})")
    # :checkhealth finds the bridge and its status.
    nvim.input("<Esc>")
    nvim.command("checkhealth hexacoder")
    report = "\n".join(nvim.current.buffer[:])
    # Neovim 0.7 writes "OK: bridge: ...", 0.10 and later "OK bridge: ...".
    if not re.search(r"OK:? bridge: ", report) or "bridge status: ready" not in report:
        sys.exit(f"FAILED: checkhealth says\n{report}")
    print("e2e ok:", nvim.exec_lua("local v = vim.version(); return v.major .. '.' .. v.minor .. '.' .. v.patch"), text.splitlines())


if __name__ == "__main__":
    main()
