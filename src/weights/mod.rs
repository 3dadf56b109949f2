//! Model weights in and out, in the official codes' formats.
//!
//! mim's parameter paths are the official state-dict keys (`blocks.0.attn.qkv.weight`), in burn's
//! layout (linear weights `[in, out]`, the patch embedding as a `[p*p*C, D]` matrix). Each family's
//! file formats live in its own module: [`mae`] (official MAE / timm ViT names, Hugging Face
//! `ViTMAEForPreTraining`), [`beit`] (official microsoft/unilm names) and [`swin`] (timm and official
//! Swin names, the official SimMIM wrapper). The generic file formats they build on are [`crate::io`].

pub mod beit;
pub mod mae;
pub mod swin;

pub use beit::{beit_from_official, load_beit_weights};
pub use mae::{
    export_weights, from_pytorch_layout, hf_to_official, load_weights, mae_config_from_hf, to_pytorch_layout,
};
