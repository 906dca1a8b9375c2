//! `hexacoder-train`, HexaCoder's companion tool. Today: `scan`, the security oracle over
//! files. The synthesis pipeline, masked-loss LoRA training and evaluation will live here.

pub mod scan;
