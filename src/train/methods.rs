//! The masked-image-modeling methods `mim pretrain` trains and their recipes: the optimizer's
//! betas, the schedule, clipping, the mask ratio and augmentation of each official script. What the
//! model is, how a batch is masked and the loss are the model's ([`crate::models::pretrain`]).
//!
//! - MAE: random masking by argsort of noise (or any [`MaskStrategy`](crate::masking::MaskStrategy)
//!   made MAE-ready), pixel regression on removed patches.
//! - BEiT: block-wise masking, a [MASK] embedding at the encoder input, cross-entropy against the
//!   visual tokenizer's ids at masked patches.
//! - SimMIM: coarse random masking of large squares, a mask token at the Swin input, L1 on masked
//!   pixels.

use serde::{Deserialize, Serialize};

use crate::optim::{MAE_BETAS, ScheduleKind, TORCH_BETAS};

/// A pretraining method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Masked autoencoder (He et al.): ViT encoder on visible patches, light decoder, pixel loss.
    #[default]
    Mae,
    /// BEiT (Bao et al.): block-wise masking, [MASK] embedding, visual-token prediction.
    Beit,
    /// SimMIM (Xie et al.) on a Swin Transformer: mask token at the input, L1 on masked pixels.
    Simmim,
}

impl Method {
    /// The preset a method trains when none is named.
    pub fn default_model(self) -> &'static str {
        match self {
            Method::Mae => "mae_tiny_28",
            Method::Beit => "beit_tiny_28",
            Method::Simmim => "swin_tiny_28",
        }
    }

    /// The pretraining augmentation of the method's paper.
    pub fn default_augmentation(self) -> crate::train::pretrain::Augmentation {
        use crate::train::pretrain::Augmentation;
        match self {
            Method::Beit => Augmentation::RandomResizedCropColorJitter,
            Method::Mae | Method::Simmim => Augmentation::RandomResizedCrop,
        }
    }

    /// AdamW betas of the method's official pretraining script.
    pub fn betas(self) -> (f32, f32) {
        match self {
            Method::Mae => MAE_BETAS,
            Method::Beit | Method::Simmim => TORCH_BETAS,
        }
    }

    /// The learning-rate schedule of the method's official pretraining script.
    pub fn schedule(self) -> ScheduleKind {
        match self {
            Method::Mae => ScheduleKind::Mae,
            Method::Beit => ScheduleKind::Beit,
            Method::Simmim => ScheduleKind::Timm,
        }
    }

    /// Global gradient-norm clipping of the method's published recipe: none for MAE
    /// (`main_pretrain.py`), 3.0 for BEiT (its README's pretraining command), 5.0 for SimMIM
    /// (`TRAIN.CLIP_GRAD`).
    pub fn default_clip_grad(self) -> Option<f64> {
        match self {
            Method::Mae => None,
            Method::Beit => Some(3.0),
            Method::Simmim => Some(5.0),
        }
    }

    /// The mask ratio of the method's paper.
    pub fn default_mask_ratio(self) -> f64 {
        match self {
            Method::Mae => 0.75,
            Method::Beit => 0.4,
            Method::Simmim => 0.6,
        }
    }
}
