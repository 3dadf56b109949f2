//! Reconstruction pictures from a pretrained model (`mim reconstruct`): load an MAE or SimMIM
//! checkpoint (or MAE weights), pick images, mask them, and draw each image as
//! `original | masked | reconstruction | reconstruction + visible`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use crate::checkpoint;
use crate::data::loader::{Batch, rng_for};
use crate::data::resize::{Resample, resize};
use crate::masking::{MASK_STREAM, Mask, MaskStrategy, SimMimMasking, uniform_noise};
use crate::models::mae::MaskedAutoencoder;
use crate::models::pretrain::{MimModel, ModelConfig};
use crate::models::simmim::SimMim;
use crate::train::methods::Method;
use crate::train::pretrain::PretrainConfig;
pub use crate::viz::{Images, LoadedImages, load_images};
use crate::viz::{ReconstructionRow, grid_image, reconstruction_rows, save_png};

/// Which patches are removed.
#[derive(Debug, Clone)]
pub enum MaskChoice {
    /// A random mask removing `ratio` of the patches (`None`: the method's default ratio; SimMIM's
    /// removes mask squares), drawn from `seed`.
    Random {
        /// Fraction removed.
        ratio: Option<f64>,
        /// Seed of the draw.
        seed: u64,
    },
    /// These patches (row-major indices) are visible in every image, the others removed.
    Visible(Vec<usize>),
    /// Visible where this image, resized to the patch grid, is bright.
    Image(PathBuf),
}

/// The pictures [`Reconstructor::write_pictures`] wrote, and what they show.
#[derive(Debug, Clone)]
pub struct Reconstructions {
    /// The picture with one row per image (`reconstructions.png`).
    pub picture: PathBuf,
    /// Each image's name: its class for dataset images, its path for files.
    pub labels: Vec<String>,
    /// Patches per image.
    pub patches: usize,
    /// Patches removed per image.
    pub removed: usize,
}

/// The two model families that predict the pixels of removed patches.
enum Model {
    Mae(MaskedAutoencoder),
    SimMim(SimMim),
}

/// A pretrained model that reconstructs masked images, with its architecture and training data.
pub struct Reconstructor {
    model: Model,
    config: ModelConfig,
    trained_on: Option<PathBuf>,
    /// Where the model comes from, for the pictures' title (a checkpoint and its epoch, or a file).
    source: String,
    /// The input normalisation that travels with weights files (checkpoints use their dataset's).
    normalization: Option<(Vec<f32>, Vec<f32>)>,
    device: Device,
}

impl Reconstructor {
    /// Loads an MAE or SimMIM checkpoint written by `mim pretrain` onto `device`.
    pub fn from_checkpoint(path: &Path, device: &Device) -> Result<Self> {
        let header = checkpoint::read_header(path)?;
        let (model, config, train) = if matches!(header.model, ModelConfig::Swin(_)) {
            let ck = checkpoint::load_model(path, device, <SimMim as MimModel>::build)?;
            (Model::SimMim(ck.model), ck.header.model, ck.header.train)
        } else {
            let ck = checkpoint::load(path, device)?;
            (Model::Mae(ck.model), ck.header.model, ck.header.train)
        };
        let source = format!("{}, epoch {}", file_name(path), header.epoch);
        let train: PretrainConfig = crate::train::config::from_json(train)?;
        Ok(Reconstructor {
            model,
            config,
            trained_on: Some(train.run.data),
            source,
            normalization: None,
            device: device.clone(),
        })
    }

    /// The MAE (with its decoder) or SimMIM of a weights file read by [`crate::weights::open`], onto
    /// `device`; images are normalised as `normalization` says (see
    /// [`crate::weights::Weights::input_normalization`]).
    pub fn from_weights(
        weights: &crate::weights::Weights,
        normalization: crate::weights::Normalization,
        device: &Device,
    ) -> Result<Self> {
        use crate::weights::Holds;
        let (model, config) = match weights.detected.holds {
            Holds::SimMim => (Model::SimMim(weights.simmim(device)?), weights.detected.config.clone()),
            holds @ (Holds::Beit | Holds::BeitClassifier { .. } | Holds::Swin { .. } | Holds::VitClassifier { .. }) => {
                bail!(
                    "'{}' holds a {holds}, which does not predict pixels: mim reconstruct draws what an MAE (with its \
                 decoder) or SimMIM predicts (BEiT predicts visual tokens)",
                    weights.path.display()
                )
            }
            Holds::Mae { .. } => {
                let (mae, cfg) = weights.mae(device)?;
                (Model::Mae(mae), ModelConfig::Mae(cfg))
            }
        };
        Ok(Reconstructor {
            model,
            config,
            trained_on: None,
            source: file_name(&weights.path),
            normalization: Some((normalization.mean, normalization.std)),
            device: device.clone(),
        })
    }

    /// The model's architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Loads `images` at the model's input size (see [`load_images`]).
    pub fn load_images(&self, images: &Images) -> Result<LoadedImages> {
        load_images(images, &self.config, self.trained_on.as_deref(), self.normalization.as_ref())
    }

    /// The mask of `batch` images that `choice` describes.
    pub fn mask(&self, choice: &MaskChoice, batch: usize) -> Result<Mask> {
        let (l, grid) = (self.config.num_patches(), self.config.grid());
        match choice {
            MaskChoice::Image(path) => mask_from_image(path, grid, batch),
            MaskChoice::Visible(visible) => Mask::from_visible(visible, batch, l),
            MaskChoice::Random { ratio, seed } => {
                let mut rng = rng_for(&[*seed, MASK_STREAM]);
                match &self.model {
                    Model::Mae(_) => {
                        let ratio = ratio.unwrap_or(Method::Mae.recipe().mask_ratio);
                        Mask::from_noise(&uniform_noise(&mut rng, batch, l), batch, ratio)
                    }
                    Model::SimMim(m) => {
                        let squares = SimMimMasking {
                            mask_patch_size: m.encoder_stride(),
                            model_patch_size: self.config.patch_size(),
                            mask_ratio: ratio.unwrap_or(Method::Simmim.recipe().mask_ratio),
                        };
                        let masked = MaskStrategy::SimMim(squares).sample((grid, grid), batch, &mut rng)?;
                        // Every image has the same number of masked squares, so this keeps the mask as drawn.
                        let keep = l - masked.row(0).iter().filter(|&&m| m).count();
                        masked.to_mae_mask(keep, &mut rng)
                    }
                }
            }
        }
    }

    /// The panels of each image of `batch` under `mask`, un-normalised with `mean`/`std`.
    pub fn reconstruct(&self, batch: &Batch, mask: &Mask, mean: &[f32], std: &[f32]) -> Result<Vec<ReconstructionRow>> {
        let imgs = batch.tensor(&self.device);
        match &self.model {
            Model::Mae(m) => crate::viz::reconstruct(m, imgs, mask, mean, std),
            Model::SimMim(m) => {
                let pred = m.forward(imgs.clone(), mask.mask_tensor(&self.device)).reconstruction;
                let removed: Vec<bool> = mask.mask.iter().map(|&v| v > 0.5).collect();
                Ok(reconstruction_rows(imgs, pred, &removed, self.config.patch_size(), mean, std))
            }
        }
    }

    /// Reconstructs `images` under `mask` and writes `reconstruction_NN.png` per image and
    /// `reconstructions.png` with all of them into `out`, panels scaled up `scale` times; with
    /// `titles`, the model, mask, column titles and each image's name around the panels (without,
    /// the bare panels, e.g. to assemble a figure).
    pub fn write_pictures(
        &self,
        images: &Images,
        mask_choice: &MaskChoice,
        out: &Path,
        scale: usize,
        titles: bool,
    ) -> Result<Reconstructions> {
        let (batch, labels, mean, std) = self.load_images(images)?;
        let mask = self.mask(mask_choice, batch.len())?;
        let rows = self.reconstruct(&batch, &mask, &mean, &std)?;
        let (c, s) = (self.config.in_chans(), self.config.img_size());
        let patches = self.config.num_patches();
        let how = match (mask_choice, &self.model) {
            (MaskChoice::Random { seed, .. }, Model::Mae(_)) => format!("random, seed {seed}"),
            (MaskChoice::Random { seed, .. }, Model::SimMim(_)) => format!("SimMIM squares, seed {seed}"),
            (MaskChoice::Visible(_), _) => "patches chosen".into(),
            (MaskChoice::Image(p), _) => format!("mask image {}", file_name(p)),
        };
        let method = if matches!(self.model, Model::Mae(_)) { "MAE" } else { "SimMIM" };
        let removed = patches - mask.len_keep;
        // Without titles, an empty title and no names: the bare panels.
        let title = if titles {
            format!("{method} ({}): {removed} of {patches} patches removed ({how})", self.source)
        } else {
            String::new()
        };
        // Row labels: class names, or file names without their folders.
        let names: Vec<String> = labels.iter().map(|l| file_name(Path::new(l))).collect();
        for (k, row) in rows.iter().enumerate() {
            let one = grid_image(std::slice::from_ref(row), (c, s, s), scale, &title, names.get(k..=k).unwrap_or(&[]))?;
            save_png(&one, &out.join(format!("reconstruction_{k:02}.png")))?;
        }
        let picture = out.join("reconstructions.png");
        save_png(&grid_image(&rows, (c, s, s), scale, &title, &names)?, &picture)?;
        Ok(Reconstructions { picture, labels, patches, removed })
    }
}

/// The last component of `path`, with its folder's name when the file name alone says little
/// (a run's `checkpoint.mim`, a Hugging Face folder's `model.safetensors`).
pub(crate) fn file_name(path: &Path) -> String {
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    match path.parent().and_then(Path::file_name) {
        Some(dir) if ["checkpoint.", "model.", "pytorch_model."].iter().any(|p| name.starts_with(p)) => {
            format!("{}/{name}", dir.to_string_lossy())
        }
        _ => name,
    }
}

/// A mask from an image: the whole image is resized (bilinearly) to the `grid x grid` patch grid;
/// bright cells are visible.
pub fn mask_from_image(path: &Path, grid: usize, batch: usize) -> Result<Mask> {
    let img = crate::data::folder::decode(path, 1)?;
    let grey: Vec<f32> = img.pixels.iter().map(|&v| v as f32).collect();
    let cells = resize(&grey, 1, (img.height, img.width), (grid, grid), Resample::Bilinear, false);
    let visible: Vec<usize> = (0..grid * grid).filter(|&i| cells[i] > 127.5).collect();
    Mask::from_visible(&visible, batch, grid * grid).with_context(|| format!("mask image '{}'", path.display()))
}
