//! Models: the shared ViT building blocks, the masked autoencoder and BEiT built from them.

pub mod beit;
pub mod init;
pub mod mae;
pub mod vit;
