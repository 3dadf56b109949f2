//! # mim: masked image modeling on burn
//!
//! Self-supervised pretraining of vision transformers by masked image modeling, faithful to the
//! papers: MAE (He et al. 2021) and BEiT (Bao et al. 2021). Modules by concept:
//!
//! - [`data`]: dataset readers (IDX, CIFAR-10, image folders), augmentation, prefetching loader
//! - [`masking`]: patch masks (MAE random masking, BEiT block-wise, grid, SimMIM)
//! - [`models`]: the shared ViT blocks, the masked autoencoder, BEiT, the Swin Transformer and SimMIM, the evaluation classifier
//! - [`train`]: optimizer with the paper's recipe, schedule, checkpoints, the pretraining loop
//! - [`viz`]: reconstruction grids, mask pictures and loss curves
//! - [`io`]: weights in and out (safetensors, Hugging Face `ViTMAEForPreTraining` names)
//! - [`ablate`]: the MAE paper's ablations as resumable studies with tables and plots
//! - [`bench`]: throughput, FLOP/s and memory against the PyTorch peer
//!
//! ```no_run
//! use mim::{models::mae::MaeConfig, masking::Mask};
//! let device = burn::tensor::Device::flex();
//! let model = MaeConfig::preset("mae_tiny_28").unwrap().init(0, &device).unwrap();
//! ```
#![warn(missing_docs)]

pub mod ablate;
pub mod bench;
pub mod data;
pub mod eval;
pub mod io;
pub mod masking;
pub mod models;
pub mod ops;
pub mod runtime;
pub mod train;
pub mod viz;
