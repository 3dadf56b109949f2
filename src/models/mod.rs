//! Models: the shared ViT building blocks, the masked autoencoder built from them, the Swin
//! Transformer and SimMIM built on the same blocks.

pub mod init;
pub mod mae;
pub mod simmim;
pub mod swin;
pub mod vit;
