//! Models: the shared ViT building blocks, the masked autoencoder and BEiT built from them, the
//! classifier used by the evaluation protocols, and the discrete visual tokenizers whose ids BEiT predicts.

pub mod beit;
pub mod classifier;
pub mod dalle;
pub mod init;
pub mod mae;
pub mod tokenizer;
pub mod vit;
