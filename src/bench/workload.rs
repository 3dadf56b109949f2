//! The workloads `mim bench` measures, mim's side of each (the real training step of `mim pretrain`
//! or `mim finetune`, or the data loader of a training run) and their analytic FLOP counts.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::data::augment::Transform;
use crate::data::loader::{Batch, Prefetcher, epoch_order, rng_for};
use crate::data::resize::Resample;
use crate::data::{Dataset, Split};
use crate::masking::{MASK_STREAM, Mask};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use crate::models::classifier::VitClassifier;
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::pretrain::{MimModel, ModelConfig, StepContext, beit_masked};
use crate::models::simmim::SimMim;
use crate::models::swin::SwinConfig;
use crate::optim::Stepper;
use crate::train::finetune::{FinetuneConfig, batch_loss};
use crate::train::methods::Method;
use crate::train::{PretrainConfig, Step};

/// What a workload runs.
#[derive(Debug, Clone)]
pub enum Task {
    /// MAE pretraining (`mim pretrain`), encoder inference.
    Mae(MaeConfig),
    /// BEiT pretraining (`mim pretrain --method beit`) on random visual-token targets.
    Beit(BeitConfig),
    /// SimMIM pretraining of a Swin (`mim pretrain --method simmim`).
    Simmim(SwinConfig),
    /// Fine-tuning the ViT of an MAE preset (`mim finetune`), classifier inference.
    Finetune {
        /// The MAE whose encoder becomes the classifier.
        model: MaeConfig,
        /// Classes of the head.
        classes: usize,
    },
    /// The image-folder data pipeline: JPEG decode + MAE's augmentation + batching, a whole epoch
    /// per step over a folder generated from the benchmark's `--data`.
    Folder {
        /// Images in the generated folder.
        images: usize,
        /// Side of the generated JPEGs.
        side: usize,
        /// Side of the crops.
        crop: usize,
    },
}

/// A benchmark workload: what it runs and the images per step (named as the peer's workloads).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Name shared with the peer (`tools/peer/peer_torch.py --workload`).
    pub name: &'static str,
    /// What it runs.
    pub task: Task,
    /// Images per batch.
    pub batch: usize,
}

/// Every workload, in the default order. Batches are the commands' defaults (pretraining 256,
/// fine-tuning 128), except the larger MAE models (the peer's configs).
pub fn workloads() -> Vec<Workload> {
    let w = |name, task, batch| Workload { name, task, batch };
    vec![
        w("fmnist-tiny", Task::Mae(MaeConfig::tiny_28()), 256),
        w("vit-tiny-32", Task::Mae(MaeConfig::tiny_32()), 128),
        // Hugging Face's default ViTMAEConfig: no norm_pix_loss.
        w("vit-base-224", Task::Mae(MaeConfig { norm_pix_loss: false, ..MaeConfig::vit_base_patch16() }), 8),
        w("beit-tiny", Task::Beit(BeitConfig::tiny_28()), 256),
        w("simmim-tiny", Task::Simmim(SwinConfig::tiny_28()), 256),
        w("finetune-tiny", Task::Finetune { model: MaeConfig::tiny_28(), classes: 10 }, 128),
        w("folder-jpeg", Task::Folder { images: 1024, side: 64, crop: 28 }, 256),
    ]
}

/// The workloads called `names`, or an error listing the known ones.
pub fn find_workloads(names: &[String]) -> Result<Vec<Workload>> {
    let all = workloads();
    names
        .iter()
        .map(|n| {
            all.iter().find(|w| w.name == n).cloned().with_context(|| {
                let known: Vec<&str> = all.iter().map(|w| w.name).collect();
                format!("unknown workload '{n}': use {}", known.join(", "))
            })
        })
        .collect()
}

impl Workload {
    /// The mask ratios measured: MAE's 0.75 (and 0 with `no_mask`), BEiT's and SimMIM's recipe
    /// ratios; `None` where nothing is masked.
    pub fn mask_ratios(&self, no_mask: bool) -> Vec<Option<f64>> {
        match &self.task {
            Task::Mae(_) if no_mask => vec![Some(0.75), Some(0.0)],
            Task::Mae(_) => vec![Some(0.75)],
            Task::Beit(_) => vec![Some(Method::Beit.recipe().mask_ratio)],
            Task::Simmim(_) => vec![Some(Method::Simmim.recipe().mask_ratio)],
            Task::Finetune { .. } | Task::Folder { .. } => vec![None],
        }
    }

    /// Whether the workload has a mask-ratio-0 variant (`--no-mask-variant`).
    pub fn is_mae(&self) -> bool {
        matches!(self.task, Task::Mae(_))
    }

    /// Analytic forward FLOPs per image at `mask_ratio`: of the training step's model, and of the
    /// inference measured (MAE: the encoder; fine-tuning: the classifier); none for the pipeline.
    pub fn flops(&self, mask_ratio: Option<f64>) -> WorkloadFlops {
        let ratio = mask_ratio.unwrap_or(0.0);
        match &self.task {
            Task::Mae(cfg) => {
                let keep =
                    if ratio == 0.0 { cfg.num_patches() } else { crate::masking::len_keep(cfg.num_patches(), ratio) };
                let f = analytic_flops(cfg, keep);
                WorkloadFlops { train_forward: Some(f.forward), infer: Some(f.encoder) }
            }
            Task::Beit(cfg) => {
                let ctx = step_context(ratio, cfg.grid());
                WorkloadFlops { train_forward: Some(beit_flops(cfg, beit_masked(&ctx))), infer: None }
            }
            Task::Simmim(cfg) => WorkloadFlops { train_forward: Some(simmim_flops(cfg)), infer: None },
            Task::Finetune { model, classes } => {
                let f = vit_classifier_flops(model, *classes);
                WorkloadFlops { train_forward: Some(f), infer: Some(f) }
            }
            Task::Folder { .. } => WorkloadFlops { train_forward: None, infer: None },
        }
    }
}

/// Forward FLOPs per image of a workload variant (see [`Workload::flops`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadFlops {
    /// The training step's model, forward (a step counts 3x).
    pub train_forward: Option<f64>,
    /// The inference measured.
    pub infer: Option<f64>,
}

/// MAE forward FLOPs per image (see the module docs of [`crate::bench`]).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Flops {
    /// Encoder + decoder forward.
    pub forward: f64,
    /// Encoder forward only.
    pub encoder: f64,
}

/// Forward FLOPs of a pre-LN transformer block on `n` tokens of width `d`, MLP width `m`.
fn block(n: f64, d: f64, m: f64) -> f64 {
    2.0 * n * (4.0 * d * d + 2.0 * d * m) + 4.0 * n * n * d
}

/// FLOPs per image of the MAE `cfg` whose encoder sees `len_keep` patches, as the peer's count.
pub fn analytic_flops(cfg: &MaeConfig, len_keep: usize) -> Flops {
    let l = cfg.num_patches() as f64;
    let k = len_keep as f64;
    let (d, dd) = (cfg.embed_dim as f64, cfg.decoder_embed_dim as f64);
    let pp = cfg.patch_dim() as f64;
    let encoder = 2.0 * k * pp * d + cfg.depth as f64 * block(k + 1.0, d, d * cfg.mlp_ratio);
    let forward = encoder
        + 2.0 * (k + 1.0) * d * dd
        + cfg.decoder_depth as f64 * block(l + 1.0, dd, dd * cfg.mlp_ratio)
        + 2.0 * (l + 1.0) * dd * pp;
    Flops { forward, encoder }
}

/// BEiT forward FLOPs per image with `masked` patches masked: the patch embedding and the blocks
/// on every patch and the cls token, the vocabulary head on the masked patches only.
pub fn beit_flops(cfg: &BeitConfig, masked: usize) -> f64 {
    let (l, d) = (cfg.num_patches() as f64, cfg.embed_dim as f64);
    let pp = (cfg.patch_size * cfg.patch_size * cfg.in_chans) as f64;
    2.0 * l * pp * d
        + cfg.depth as f64 * block(l + 1.0, d, (d * cfg.mlp_ratio).floor())
        + 2.0 * masked as f64 * d * cfg.vocab_size as f64
}

/// SimMIM-on-Swin forward FLOPs per image: the patch embedding; per stage the patch merging
/// (`4 d/2 -> d` on `r^2` tokens) and blocks whose attention is within `w x w` windows
/// (`4 r^2 w^2 d`); the 1x1-convolution decoder to `stride^2 C` values per final position.
pub fn simmim_flops(cfg: &SwinConfig) -> f64 {
    let g = cfg.grid() as f64;
    let pp = (cfg.patch_size * cfg.patch_size * cfg.in_chans) as f64;
    let mut f = 2.0 * g * g * pp * cfg.embed_dim as f64;
    for (i, &depth) in cfg.depths.iter().enumerate() {
        let (r, d, w) = (cfg.stage_resolution(i) as f64, cfg.stage_dim(i) as f64, cfg.stage_window(i) as f64);
        if i > 0 {
            f += 2.0 * r * r * 2.0 * d * d;
        }
        let m = (d * cfg.mlp_ratio).floor();
        f += depth as f64 * (2.0 * r * r * (4.0 * d * d + 2.0 * d * m) + 4.0 * r * r * w * w * d);
    }
    let r = cfg.stage_resolution(cfg.num_stages() - 1) as f64;
    let s = cfg.encoder_stride() as f64;
    f + 2.0 * r * r * cfg.num_features() as f64 * s * s * cfg.in_chans as f64
}

/// ViT classifier forward FLOPs per image: the MAE encoder on every patch and the linear head.
pub fn vit_classifier_flops(cfg: &MaeConfig, classes: usize) -> f64 {
    analytic_flops(cfg, cfg.num_patches()).encoder + 2.0 * cfg.embed_dim as f64 * classes as f64
}

/// What a workload's mim side does, once built and warmed up.
pub trait Measure {
    /// One training step (or, for the pipeline, one epoch of batches).
    fn train(&mut self) -> Result<()>;
    /// One inference call; false where the workload has none.
    fn infer(&mut self) -> Result<bool>;
    /// Images per [`Measure::train`] or [`Measure::infer`] call.
    fn images(&self) -> usize;
    /// Trainable parameters (0 for the pipeline).
    fn params(&self) -> usize;
}

/// Micro-batches per "epoch" of the benchmark's learning-rate schedules: only the shape of the
/// schedule depends on it, never the cost of a step.
const ITERS_PER_EPOCH: usize = 1000;

/// The loss of micro-batch `iteration` of a model.
type LossFn<M> = Box<dyn FnMut(&M, u64) -> Result<Tensor<1>>>;
/// An inference call on the model without autodiff.
type InferFn<M> = Box<dyn Fn(&M)>;

/// A model trained as its command trains it: the loss of the command, the optimizer step of its
/// [`Stepper`] (parameter groups, schedule, clipping, layer decay).
pub struct ModelSteps<M: Module> {
    model: Option<M>,
    stepper: Stepper<M>,
    loss: LossFn<M>,
    infer: Option<InferFn<M>>,
    /// The model without autodiff, made at the first inference after a training step.
    valid: Option<M>,
    iteration: u64,
    images: usize,
    device: Device,
}

impl<M: Module> Measure for ModelSteps<M> {
    fn train(&mut self) -> Result<()> {
        self.valid = None;
        let model = self.model.take().context("a failed step left no model")?;
        let loss = (self.loss)(&model, self.iteration)?;
        let (model, _) = self.stepper.backward(model, loss, self.iteration);
        // Asynchronous devices would otherwise return before the step ran.
        let _ = self.device.sync();
        self.model = Some(model);
        self.iteration += 1;
        Ok(())
    }

    fn infer(&mut self) -> Result<bool> {
        let Some(f) = &self.infer else { return Ok(false) };
        let model = self.model.as_ref().context("a failed step left no model")?;
        f(self.valid.get_or_insert_with(|| model.valid()));
        let _ = self.device.sync();
        Ok(true)
    }

    fn images(&self) -> usize {
        self.images
    }

    fn params(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.num_params())
    }
}

/// A batch of `b` standard-normal images (`channels x side x side`) with labels below `classes`,
/// drawn from `seed`: the peer's `torch.randn` input.
fn random_batch(b: usize, channels: usize, side: usize, classes: usize, seed: u64) -> Batch {
    let mut rng = rng_for(&[seed, 0xBA7C]);
    let images = (0..b * channels * side * side).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
    let labels = (0..b).map(|_| rng.gen_range(0..classes.max(1) as u32)).collect();
    Batch { images, labels, indices: (0..b).collect(), channels, side }
}

fn step_context(ratio: f64, grid: usize) -> StepContext {
    StepContext { ratio, strategy: None, grid: (grid, grid), tokenizer: None }
}

/// `M` as `mim pretrain --method method` trains it: the method's optimizer recipe for batch `b`.
fn pretraining<M: MimModel>(
    method: Method,
    model_cfg: &ModelConfig,
    b: usize,
    seed: u64,
    device: &Device,
    loss: LossFn<M>,
    infer: Option<InferFn<M>>,
) -> Result<ModelSteps<M>> {
    let mut cfg = PretrainConfig { method, ..PretrainConfig::default() };
    cfg.run.batch_size = b;
    let model = M::build(model_cfg, seed, &device.clone().autodiff())?;
    let stepper = cfg.stepper(&model, ITERS_PER_EPOCH, None)?;
    Ok(ModelSteps {
        model: Some(model),
        stepper,
        loss,
        infer,
        valid: None,
        iteration: 0,
        images: b,
        device: device.clone(),
    })
}

/// MAE pretraining of `cfg` at `mask_ratio`, masks drawn per step as `mim pretrain` draws them;
/// ratio 0 keeps every patch (the paper's Table 2 cost, no real training run). Inference: the
/// encoder on a fixed mask of the same ratio.
pub fn mae_steps(
    cfg: &MaeConfig,
    b: usize,
    mask_ratio: f64,
    seed: u64,
    device: &Device,
) -> Result<ModelSteps<MaskedAutoencoder>> {
    let ad = device.clone().autodiff();
    let batch = random_batch(b, cfg.in_chans, cfg.img_size, 1, seed);
    let l = cfg.num_patches();
    let ctx = step_context(mask_ratio, cfg.grid());
    let loss: LossFn<MaskedAutoencoder> = {
        let batch = batch.clone();
        Box::new(move |m, it| {
            if mask_ratio == 0.0 {
                return Ok(m.forward(batch.tensor(&ad), &Mask::keep_all(b, l)).loss);
            }
            m.batch_loss(&batch, &ad, &ctx, &mut rng_for(&[seed, it, MASK_STREAM]))
        })
    };
    let mask = if mask_ratio == 0.0 {
        Mask::keep_all(b, l)
    } else {
        Mask::from_noise(&crate::masking::uniform_noise(&mut rng_for(&[seed, 1]), b, l), b, mask_ratio)?
    };
    let imgs = batch.tensor(device);
    let infer: InferFn<MaskedAutoencoder> = Box::new(move |m| {
        let _ = m.forward_encoder(imgs.clone(), &mask).into_data();
    });
    pretraining(Method::Mae, &ModelConfig::Mae(cfg.clone()), b, seed, device, loss, Some(infer))
}

/// Builds mim's side of `w` at `mask_ratio` on `device`, seeded by `seed`; `data` is the IDX
/// dataset the pipeline's JPEG folder is generated from, into `scratch`.
pub fn build(
    w: &Workload,
    mask_ratio: Option<f64>,
    seed: u64,
    data: &Path,
    scratch: &Path,
    device: &Device,
) -> Result<Box<dyn Measure>> {
    let b = w.batch;
    let ad = device.clone().autodiff();
    let ratio = mask_ratio.unwrap_or(0.0);
    Ok(match &w.task {
        Task::Mae(cfg) => Box::new(mae_steps(cfg, b, ratio, seed, device)?),
        Task::Beit(cfg) => {
            let batch = random_batch(b, cfg.in_chans, cfg.img_size, 1, seed);
            // Random visual tokens: the tokenizer that would give them is not part of the timed step.
            let mut rng = rng_for(&[seed, 0x70C]);
            let ids: Vec<i64> = (0..b * cfg.num_patches()).map(|_| rng.gen_range(0..cfg.vocab_size as i64)).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, cfg.num_patches()]), &ad);
            let ctx = step_context(ratio, cfg.grid());
            let loss: LossFn<BeitForMaskedImageModeling> = Box::new(move |m, it| {
                m.token_loss(batch.tensor(&ad), ids.clone(), &ctx, &mut rng_for(&[seed, it, MASK_STREAM]))
            });
            Box::new(pretraining(Method::Beit, &ModelConfig::Beit(cfg.clone()), b, seed, device, loss, None)?)
        }
        Task::Simmim(cfg) => {
            let batch = random_batch(b, cfg.in_chans, cfg.img_size, 1, seed);
            let ctx = step_context(ratio, cfg.grid());
            let loss: LossFn<SimMim> =
                Box::new(move |m, it| m.batch_loss(&batch, &ad, &ctx, &mut rng_for(&[seed, it, MASK_STREAM])));
            Box::new(pretraining(Method::Simmim, &ModelConfig::Swin(cfg.clone()), b, seed, device, loss, None)?)
        }
        Task::Finetune { model, classes } => Box::new(finetune_steps(model, *classes, b, seed, device)?),
        Task::Folder { images, side, crop } => {
            write_jpeg_folder(data, scratch, *images, *side)?;
            Box::new(PipelineSteps::new(scratch, *crop, b, seed, device)?)
        }
    })
}

/// `mim finetune --from-scratch` of the ViT of `cfg` with `classes` classes: its defaults (layer
/// decay 0.75, drop path 0.1, label smoothing 0.1, mixup off) at batch `b`.
fn finetune_steps(
    cfg: &MaeConfig,
    classes: usize,
    b: usize,
    seed: u64,
    device: &Device,
) -> Result<ModelSteps<VitClassifier>> {
    let ad = device.clone().autodiff();
    let mut ft = FinetuneConfig::default();
    ft.run.batch_size = b;
    ft.run.seed = seed;
    let model = VitClassifier::from_scratch(cfg, classes, ft.pool, seed, &ad)?.with_drop_path(ft.drop_path);
    let stepper = ft.stepper(&model, ITERS_PER_EPOCH, None)?;
    let mut batch = random_batch(b, cfg.in_chans, cfg.img_size, classes, seed);
    let imgs = batch.tensor(device);
    let loss: LossFn<VitClassifier> =
        Box::new(move |m, it| Ok(batch_loss(m, &mut batch, classes, &ft, Step::new(it), 0, &ad)));
    let infer: InferFn<VitClassifier> = Box::new(move |m| {
        let _ = m.forward(imgs.clone()).into_data();
    });
    Ok(ModelSteps {
        model: Some(model),
        stepper,
        loss,
        infer: Some(infer),
        valid: None,
        iteration: 0,
        images: b,
        device: device.clone(),
    })
}

/// The data loader of a training run over an image folder: one worker thread decoding and
/// augmenting ahead of the consumer, which turns each batch into a tensor as the training loop does.
pub struct PipelineSteps {
    ds: Arc<Dataset>,
    transform: Transform,
    batch: usize,
    prefetch: usize,
    seed: u64,
    epoch: u64,
    device: Device,
}

impl PipelineSteps {
    /// Over the image folder `dir`: MAE's pretraining crops at `crop` pixels, resampled bicubic
    /// (`mim pretrain --resample bicubic`, torchvision's `interpolation=3`).
    pub fn new(dir: &Path, crop: usize, batch: usize, seed: u64, device: &Device) -> Result<Self> {
        let ds = Dataset::open(dir, Split::Train)?;
        ensure!(ds.len() >= batch, "the image folder holds {} images, fewer than one batch of {batch}", ds.len());
        Ok(Self {
            ds: Arc::new(ds),
            transform: Transform::mae_pretrain(crop).resampled(Some(Resample::Bicubic)),
            batch,
            prefetch: crate::train::RunConfig::default().prefetch,
            seed,
            epoch: 0,
            device: device.clone(),
        })
    }
}

impl Measure for PipelineSteps {
    /// One epoch, started cold as each epoch of a run starts.
    fn train(&mut self) -> Result<()> {
        let order = epoch_order(self.ds.len(), self.seed, self.epoch);
        let loader = Prefetcher::spawn(
            self.ds.clone(),
            self.transform.clone(),
            order,
            self.batch,
            0,
            self.seed,
            self.epoch,
            self.prefetch,
        );
        for batch in loader {
            let _ = batch?.tensor(&self.device);
        }
        self.epoch += 1;
        Ok(())
    }

    fn infer(&mut self) -> Result<bool> {
        Ok(false)
    }

    fn images(&self) -> usize {
        self.ds.len() / self.batch * self.batch
    }

    fn params(&self) -> usize {
        0
    }
}

/// Writes the first `images` training images of the IDX dataset `data` to `dir/CLASS/NNNNN.jpg`
/// as `side x side` RGB JPEGs (quality 90; bilinear upscaling, so decoding and cropping have
/// real work): the same files for mim and the peer.
pub fn write_jpeg_folder(data: &Path, dir: &Path, images: usize, side: usize) -> Result<()> {
    let ds = Dataset::open(data, Split::Train)?;
    if !matches!(ds.storage, crate::data::Storage::Memory { .. }) || ds.len() < images {
        bail!(
            "the folder-jpeg workload generates {images} JPEGs from an IDX or CIFAR dataset of at least that many \
             images: pass --data data/fashion-mnist-subset (got '{}', {} images)",
            data.display(),
            ds.len()
        );
    }
    for i in 0..images {
        let img = ds.image(i)?;
        let rgb: Vec<u8> = match img.channels {
            1 => img.pixels.iter().flat_map(|&p| [p, p, p]).collect(),
            _ => img.pixels,
        };
        let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, rgb).context("image size")?;
        let big = image::imageops::resize(&buf, side as u32, side as u32, image::imageops::FilterType::Triangle);
        let class = dir.join(format!("{:02}", ds.labels[i]));
        std::fs::create_dir_all(&class).with_context(|| format!("cannot create '{}'", class.display()))?;
        let path = class.join(format!("{i:05}.jpg"));
        let file = std::fs::File::create(&path).with_context(|| format!("cannot write '{}'", path.display()))?;
        image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90)
            .encode_image(&big)
            .with_context(|| format!("cannot encode '{}'", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(name: &str) -> Workload {
        find_workloads(&[name.to_string()]).unwrap().remove(0)
    }

    #[test]
    fn flop_counts_match_hand_computed_values() {
        // MAE (values printed by the peer's count for the same configs at mask 0.75).
        let w = workloads();
        let Task::Mae(tiny) = &w[0].task else { panic!() };
        let f = analytic_flops(tiny, 12);
        assert_eq!((f.forward, f.encoder), (112_587_264.0, 69_861_888.0));
        let Task::Mae(base) = &w[2].task else { panic!() };
        let f = analytic_flops(base, 49);
        assert_eq!((f.forward, f.encoder), (19_388_858_368.0, 8_643_428_352.0));

        // BEiT tiny at 28 px: 49 patches of 4x4x1, 192 wide, 6 blocks on 50 tokens, 20 of 49 masked
        // (0.4 x 49 = 19.6), head 192 -> 512.
        // patch 2*49*16*192 = 301_056; block 2*50*(4*192^2 + 2*192*768) + 4*50^2*192
        // = 100*(147_456 + 294_912) + 1_920_000 = 46_156_800; head 2*20*192*512 = 3_932_160.
        let beit = find("beit-tiny").flops(Some(0.4));
        assert_eq!(
            beit,
            WorkloadFlops { train_forward: Some(301_056.0 + 6.0 * 46_156_800.0 + 3_932_160.0), infer: None }
        );

        // Swin tiny at 28 px: patch 2 -> 14x14 tokens 48 wide; stage 0 two blocks, window 7:
        // 2*196*(4*48^2 + 2*48*192) + 4*196*49*48 = 392*27_648 + 1_843_968 = 12_681_984 each;
        // stage 1 (7x7, 96 wide): merging 2*49*2*96*96 = 1_806_336, six blocks of
        // 2*49*(4*96^2 + 2*96*384) + 4*49*49*96 = 98*110_592 + 921_984 = 11_760_000;
        // patch embedding 2*196*4*48 = 75_264; decoder 2*49*96*16 = 150_528.
        let swin = find("simmim-tiny").flops(Some(0.6)).train_forward.unwrap();
        assert_eq!(swin, 75_264.0 + 2.0 * 12_681_984.0 + 1_806_336.0 + 6.0 * 11_760_000.0 + 150_528.0);

        // Fine-tuning: the encoder on all 49 patches (+ cls) and the head 192 -> 10.
        let ft = find("finetune-tiny").flops(None);
        let f = 301_056.0 + 6.0 * 46_156_800.0 + 2.0 * 192.0 * 10.0;
        assert_eq!(ft, WorkloadFlops { train_forward: Some(f), infer: Some(f) });
        assert_eq!(find("folder-jpeg").flops(None), WorkloadFlops { train_forward: None, infer: None });
    }

    #[test]
    fn unknown_workloads_are_named_with_the_known_ones() {
        let err = find_workloads(&["vit-huge".into()]).unwrap_err().to_string();
        assert!(err.contains("'vit-huge'") && err.contains("beit-tiny") && err.contains("folder-jpeg"), "{err}");
    }

    /// One tiny step of each new workload's mim side (a batch of 2; the pipeline over 8 JPEGs).
    #[test]
    fn each_new_workload_runs_a_step() {
        let device = Device::flex();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::data::SHIPPED_SUBSET);
        for mut w in workloads().into_iter().filter(|w| !w.is_mae()) {
            let tmp = tempfile::tempdir().unwrap();
            w.batch = 2;
            if let Task::Folder { images, .. } = &mut w.task {
                *images = 8;
            }
            let ratio = w.mask_ratios(false)[0];
            let mut m = build(&w, ratio, 0, &data, tmp.path(), &device).unwrap();
            m.train().unwrap();
            m.train().unwrap();
            let expect_infer = w.flops(ratio).infer.is_some();
            assert_eq!(m.infer().unwrap(), expect_infer, "{}", w.name);
            let (images, params) = (m.images(), m.params());
            assert_eq!(images, if w.name == "folder-jpeg" { 8 } else { 2 }, "{}", w.name);
            assert_eq!(params > 0, w.name != "folder-jpeg", "{}", w.name);
        }
    }
}
