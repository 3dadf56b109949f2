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

use crate::data::augment::Augmentation;
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

/// What a method's official pretraining script sets, where mim follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// The preset trained when none is named.
    pub default_model: &'static str,
    /// The paper's pretraining augmentation.
    pub augmentation: Augmentation,
    /// AdamW betas.
    pub betas: (f32, f32),
    /// The learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Global gradient-norm clipping of the published recipe.
    pub clip_grad: Option<f64>,
    /// The paper's mask ratio.
    pub mask_ratio: f64,
}

impl Method {
    /// The method's name as its paper writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Mae => "MAE",
            Method::Beit => "BEiT",
            Method::Simmim => "SimMIM",
        }
    }

    /// The method's recipe: MAE's `main_pretrain.py` (AdamW 0.9/0.95, no clipping, 75% masked);
    /// BEiT's `run_beit_pretraining.py` with its README's command (clipping 3.0, colour jitter,
    /// 40% masked block-wise); SimMIM's `main_simmim.py` (timm's schedule, `TRAIN.CLIP_GRAD` 5.0,
    /// 60% of the mask squares).
    pub fn recipe(self) -> Recipe {
        match self {
            Method::Mae => Recipe {
                default_model: "mae_tiny_28",
                augmentation: Augmentation::RandomResizedCrop,
                betas: MAE_BETAS,
                schedule: ScheduleKind::Mae,
                clip_grad: None,
                mask_ratio: 0.75,
            },
            Method::Beit => Recipe {
                default_model: "beit_tiny_28",
                augmentation: Augmentation::RandomResizedCropColorJitter,
                betas: TORCH_BETAS,
                schedule: ScheduleKind::Beit,
                clip_grad: Some(3.0),
                mask_ratio: 0.4,
            },
            Method::Simmim => Recipe {
                default_model: "swin_tiny_28",
                augmentation: Augmentation::RandomResizedCrop,
                betas: TORCH_BETAS,
                schedule: ScheduleKind::Timm,
                clip_grad: Some(5.0),
                mask_ratio: 0.6,
            },
        }
    }
}
