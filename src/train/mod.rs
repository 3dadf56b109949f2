//! Training: the one loop ([`trainer::fit`]) and the jobs it runs, each a [`trainer::Task`]:
//! pretraining by every method of [`methods`] (MAE, BEiT, SimMIM) as its official script trains
//! (`main_pretrain.py`, `run_beit_pretraining.py`, `main_simmim.py`), fine-tuning
//! ([`finetune`], MAE's `main_finetune.py`) and the visual tokenizer ([`tokenizer`]). Their
//! settings share the `[run]` and `[optim]` tables of [`config`]. tests/trajectory.rs replays 50
//! steps of each official script against PyTorch.

pub mod config;
pub mod finetune;
pub mod lock;
pub mod methods;
pub mod pretrain;
pub mod tokenizer;
pub mod trainer;

pub use config::{OptimConfig, RunConfig};
pub use pretrain::{PretrainConfig, pretrain};
pub use trainer::{Reporter, Silent, Step, StepMetrics};
