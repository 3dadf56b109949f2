//! # mim: masked image modeling on burn
//!
//! Self-supervised pretraining of vision transformers by masked image modeling, faithful to the
//! papers: MAE (He et al. 2021) and BEiT (Bao et al. 2021). Modules by concept, in layers: a module
//! uses only modules of lower layers (tests/architecture.rs checks it).
//!
//! 0. [`ops`]: fused CPU kernels (linear, attention, layer norm, GELU, gather, the AdamW step);
//!    [`data`]: dataset readers (IDX, CIFAR-10, image folders), resampling (torch's interpolate),
//!    augmentation and the evaluation transform, prefetching loader;
//!    [`masking`]: patch masks (MAE random masking, BEiT block-wise, grid, SimMIM);
//!    [`runtime`]: CPU process settings, device selection; [`io`]: generic file formats (safetensors,
//!    atomic writes, TOML, JSON lines)
//! 1. [`optim`]: AdamW with each script's parameter groups, layer decay, LARS, the official
//!    schedules, clipping, the training step
//! 2. [`models`]: the shared ViT blocks, the masked autoencoder, BEiT, the Swin Transformer and
//!    SimMIM, the evaluation classifiers, the visual tokenizers, and what pretraining needs of a model
//! 3. [`checkpoint`]: atomic, CRC-checked checkpoints with exact resume; [`viz`]: reconstruction
//!    grids, mask pictures and loss curves
//! 4. [`weights`]: model weights in and out for MAE, BEiT, Swin and SimMIM (official, timm and
//!    Hugging Face names, `.pth` and safetensors, mim's checkpoints), position embeddings and bias
//!    tables resized to other sizes
//! 5. [`eval`]: features, linear probing, k-NN, test accuracy
//! 6. [`train`]: the one training loop and its jobs (pretraining with each method's recipe,
//!    fine-tuning, the tokenizer), their shared `[run]` / `[optim]` settings
//! 7. [`bench`]: throughput, FLOP/s and memory against the PyTorch peer; [`check`]: parity with
//!    the PyTorch fixtures on any device; [`reconstruct`]: reconstruction pictures of a pretrained model;
//!    [`attention`]: its [CLS] attention maps; [`results`]: result records with their provenance,
//!    and the tables and plots generated from them
//! 8. [`ablate`]: the MAE paper's ablations as resumable studies with tables and plots;
//!    [`serve`]: the web viewer; [`report`]: a run's HTML report
//!
//! ```no_run
//! use mim::{models::mae::MaeConfig, masking::Mask};
//! let device = burn::tensor::Device::flex();
//! let model = MaeConfig::preset("mae_tiny_28").unwrap().init(0, &device).unwrap();
//! ```
#![warn(missing_docs)]

pub mod ablate;
pub mod attention;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod io;
pub mod masking;
pub mod models;
pub mod ops;
pub mod optim;
pub mod reconstruct;
pub mod report;
pub mod results;
pub mod runtime;
pub mod serve;
pub mod train;
pub mod viz;
pub mod weights;
