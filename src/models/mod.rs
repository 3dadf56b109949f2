//! Models: the shared ViT building blocks, the masked autoencoder and BEiT built from them, and
//! the classifier used by the evaluation protocols.

pub mod beit;
pub mod classifier;
pub mod init;
pub mod mae;
pub mod vit;
