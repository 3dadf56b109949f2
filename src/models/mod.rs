//! Models: the shared ViT building blocks and the masked autoencoder built from them.

pub mod classifier;
pub mod init;
pub mod mae;
pub mod vit;
