//! Models: the shared ViT building blocks and what is built from them: the masked autoencoder,
//! BEiT, the Swin Transformer and SimMIM, and the classifier used by the evaluation protocols.

pub mod beit;
pub mod classifier;
pub mod init;
pub mod mae;
pub mod simmim;
pub mod swin;
pub mod vit;
