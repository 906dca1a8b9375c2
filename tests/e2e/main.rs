//! HexaCoder as its users meet it: the built `hexacoder-server` binary driven by real
//! clients (the official `openai` Python client, llama.cpp's llama.vim in Neovim) and by the
//! built `hexacoder-lsp` bridge, alone over stdio and inside Neovim and VS Code. Each crate
//! keeps its own tests; these are the ones that span the product.

mod bridge;
mod harness;
mod llama_vim;
mod openai_client;
