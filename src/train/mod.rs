//! Pretraining with the MAE paper's recipe: AdamW (betas 0.9/0.95, weight decay 0.05 except on
//! biases, norms and tokens), lr = base_lr x effective batch / 256 with per-iteration linear
//! warmup and half-cycle cosine decay, gradient accumulation, atomic checkpoints and exact resume,
//! for every method of [`methods`] (MAE, SimMIM).

pub mod checkpoint;
pub mod methods;
pub mod optim;
pub mod pretrain;
pub mod tokenizer;

pub use pretrain::{PretrainConfig, Reporter, StepMetrics, pretrain};
