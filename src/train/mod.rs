//! Pretraining as each method's official script trains (`main_pretrain.py`,
//! `run_beit_pretraining.py`, `main_simmim.py`): AdamW with the script's betas and weight-decay
//! groups, lr = base_lr x effective batch / 256 with the script's per-iteration warm-up and cosine
//! schedule, gradient clipping where the recipe clips, gradient accumulation, atomic checkpoints and
//! exact resume, for every method of [`methods`] (MAE, BEiT, SimMIM). tests/trajectory.rs replays
//! 50 steps of each script against PyTorch. Also the other training jobs: the visual tokenizer
//! ([`tokenizer`]) and fine-tuning ([`finetune`]).

pub mod finetune;
pub mod lock;
pub mod methods;
pub mod pretrain;
pub mod tokenizer;

pub use pretrain::{PretrainConfig, Reporter, StepMetrics, pretrain};
