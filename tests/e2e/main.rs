//! HexaCoder as its users meet it: the built `hexacoder-server` binary driven by real
//! clients, the official `openai` Python client and llama.cpp's llama.vim in Neovim. Each
//! crate keeps its own tests; these are the ones that span the product.

mod harness;
mod llama_vim;
mod openai_client;
