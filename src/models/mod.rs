//! Models: the shared ViT building blocks and what is built from them: the masked autoencoder,
//! BEiT, the Swin Transformer and SimMIM, the classifiers used by the evaluation protocols, and the
//! discrete visual tokenizers (VQ-VAE, DALL-E's encoder) whose ids BEiT predicts; and what
//! pretraining needs of a model ([`pretrain`]: the architecture a checkpoint records, the masking
//! and loss of each method).

pub mod beit;
pub mod classifier;
pub mod dalle;
pub mod init;
pub mod mae;
pub mod pretrain;
pub mod simmim;
pub mod swin;
pub mod tokenizer;
pub mod vit;
