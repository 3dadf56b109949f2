//! What the viewer computes, without HTTP: a pretrained model, the dataset it browses, the photos
//! users uploaded, and the answers (masks, reconstructions, attention, neighbours) as plain values.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::attention::AttentionEncoder;
use crate::data::loader::rng_for;
use crate::data::{Dataset, Image, Split};
use crate::eval::{Backbone, FeatureEncoder, Features};
use crate::masking::{BlockMasking, BoolMask, MASK_STREAM, Mask, MaskStrategy};
use crate::models::beit::BeitForMaskedImageModeling;
use crate::models::classifier::Pool;
use crate::models::pretrain::{MimModel, ModelConfig};
use crate::models::tokenizer::VqTokenizer;
use crate::reconstruct::{MaskChoice, Reconstructor};
use crate::viz::{Captions, LoadedImages, decoded_batch, denormalize, grid_image, load_dataset_images, panels_image};

/// Uploaded photos kept at once; the oldest is dropped first.
pub const MAX_UPLOADS: usize = 32;

/// What the viewer shows.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// A mim pretraining checkpoint or any weights file [`crate::weights::open`] reads.
    pub checkpoint: PathBuf,
    /// Dataset to browse (default: the data the checkpoint was trained on).
    pub data: Option<PathBuf>,
    /// Split browsed; neighbours come from the training split.
    pub split: Split,
    /// Training images whose features are searched for neighbours (0: no neighbours).
    pub neighbour_pool: usize,
    /// Up-scaling of the reconstruction picture (as `mim reconstruct --scale`).
    pub scale: usize,
    /// The tokenizer of a BEiT (default: the one its checkpoint names; a weights file names none).
    pub tokenizer: Option<PathBuf>,
}

impl ViewerConfig {
    /// The default number of training images searched for neighbours.
    pub const NEIGHBOURS: usize = 5000;
    /// The default up-scaling of the reconstruction picture.
    pub const SCALE: usize = 4;
}

/// An image the viewer works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageRef {
    /// Image `i` of the browsed split.
    Dataset(usize),
    /// Image `i` of the training split (a neighbour).
    Train(usize),
    /// The uploaded photo with this id.
    Upload(usize),
}

/// What the page needs to know about the model and the data.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Family and source, e.g. "MAE (demo/checkpoint.mim, epoch 3)".
    pub model: String,
    /// Input side in pixels.
    pub img_size: usize,
    /// Patches per side.
    pub grid: usize,
    /// Input channels.
    pub channels: usize,
    /// Fraction masked by default (the method's recipe).
    pub default_ratio: f64,
    /// What the random mask removes: patches (MAE, BEiT) or SimMIM's mask squares.
    pub random_mask: String,
    /// The mask strategy the page starts with: the method's own ("block" for BEiT, else "random").
    pub default_strategy: String,
    /// Why reconstruction is unavailable (`None`: available).
    pub no_reconstruction: Option<String>,
    /// Why attention maps are unavailable (`None`: available).
    pub no_attention: Option<String>,
    /// Why neighbours are unavailable (`None`: available).
    pub no_neighbours: Option<String>,
    /// Why the visual-token view is unavailable (`None`: a BEiT with its tokenizer).
    pub no_tokens: Option<String>,
    /// Training images searched for neighbours.
    pub neighbour_pool: usize,
    /// The browsed dataset.
    pub dataset: Option<DatasetInfo>,
    /// Notes the user should read (what the weights file could not say and was assumed).
    pub notes: Vec<String>,
}

/// The browsed dataset.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    /// Description (format and path).
    pub name: String,
    /// Split browsed.
    pub split: Split,
    /// Images in it.
    pub len: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// Class of each image.
    pub labels: Vec<u32>,
}

/// A reconstruction: the picture `mim reconstruct --no-titles` draws for the same image and mask.
#[derive(Debug, Clone, Serialize)]
pub struct Reconstruction {
    /// PNG of `original | masked | reconstruction | reconstruction + visible`.
    #[serde(skip)]
    pub png: Vec<u8>,
    /// Patches removed.
    pub removed: usize,
    /// Milliseconds the model took.
    pub millis: f64,
}

/// Attention over the patches: the [CLS] token's (ViTs) or what each patch receives in its
/// window (Swin).
#[derive(Debug, Clone, Serialize)]
pub struct Attention {
    /// `[layer][head][patch]`.
    pub maps: Vec<Vec<Vec<f32>>>,
    /// Patches per side of each layer.
    pub grids: Vec<usize>,
    /// What the maps show.
    pub what: String,
    /// Milliseconds the model took.
    pub millis: f64,
}

/// BEiT's view of an image: its visual tokens and the model's guesses at the hidden ones.
#[derive(Debug, Clone, Serialize)]
pub struct Tokens {
    /// The tokenizer's id of every patch, row-major.
    pub ids: Vec<u32>,
    /// BEiT's most likely token at each hidden patch (`None` where the patch is visible).
    pub predicted: Vec<Option<u32>>,
    /// Hidden patches whose token BEiT predicted exactly.
    pub correct: usize,
    /// Tokens in the tokenizer's codebook.
    pub vocab: usize,
    /// PNG of `original | masked | decoded from its tokens | decoded with BEiT's predictions`.
    #[serde(skip)]
    pub png: Vec<u8>,
    /// Milliseconds the models took.
    pub millis: f64,
}

/// A training image near the query in feature space.
#[derive(Debug, Clone, Serialize)]
pub struct Neighbour {
    /// Index in the training split.
    pub index: usize,
    /// Its class.
    pub class: String,
    /// Cosine similarity of the features.
    pub similarity: f32,
}

/// A pretrained model with its data, answering the viewer's questions.
pub struct Viewer {
    info: Info,
    config: ModelConfig,
    scale: usize,
    reconstructor: Option<Reconstructor>,
    /// Normalisation of the reconstruction and token models' inputs (`None`: the dataset's own
    /// statistics).
    input_norm: Option<(Vec<f32>, Vec<f32>)>,
    attention: Option<AttentionEncoder>,
    /// A BEiT checkpoint's model and the tokenizer it was trained with.
    beit: Option<(BeitForMaskedImageModeling, VqTokenizer)>,
    features: Option<(FeatureEncoder, Features)>,
    /// Normalisation of the encoder's inputs (attention and neighbours).
    encoder_norm: (Vec<f32>, Vec<f32>),
    data: Option<Dataset>,
    train: Option<Dataset>,
    uploads: Vec<(usize, Image)>,
    next_upload: usize,
    device: Device,
}

impl Viewer {
    /// Loads the model and the data; `progress` hears what is being prepared.
    pub fn new(cfg: &ViewerConfig, progress: &mut dyn FnMut(&str)) -> Result<Self> {
        let device = Device::flex();
        let weights = crate::weights::open(&cfg.checkpoint)?;
        let header = crate::checkpoint::read_header(&cfg.checkpoint).ok();
        let is_checkpoint = header.is_some();
        let (norm, _) = weights.input_normalization()?;
        let encoder_norm = (norm.mean.clone(), norm.std.clone());
        let config = weights.detected.config.clone();
        let trained_on = header.as_ref().and_then(trained_on);
        let data_path = cfg.data.clone().or(trained_on);

        // Checkpoints normalise with the browsed dataset's statistics, weights files with their own,
        // as `mim reconstruct` does.
        let input_norm = (!is_checkpoint).then(|| encoder_norm.clone());
        let reconstructor = if matches!(config, ModelConfig::Beit(_)) {
            Err(anyhow::anyhow!("BEiT predicts visual tokens, not pixels (its view is the visual tokens)"))
        } else if is_checkpoint {
            Reconstructor::from_checkpoint(&cfg.checkpoint, &device)
        } else {
            Reconstructor::from_weights(&weights, norm.clone(), &device)
        };
        let attention = AttentionEncoder::new(&weights, &device);
        let beit = match &config {
            ModelConfig::Beit(beit) => beit_with_tokenizer(cfg, &weights, beit, header.as_ref(), &device),
            other => Err(anyhow::anyhow!("visual tokens are BEiT's targets; this is a {} model", other.kind())),
        };
        // A tokenizer the user named must work: the page would otherwise hide the mistake in one view.
        if let (Some(t), Err(e)) = (&cfg.tokenizer, &beit) {
            bail!("--tokenizer '{}' cannot serve: {e:#}", t.display());
        }

        let data = data_path.as_deref().map(|p| Dataset::open(p, cfg.split)).transpose()?;
        let (train, features) = match (&data_path, cfg.neighbour_pool) {
            (None, _) => (None, Err(anyhow::anyhow!("no dataset: pass --data"))),
            (Some(_), 0) => (None, Err(anyhow::anyhow!("--neighbours 0"))),
            (Some(p), n) => {
                let mut train = Dataset::open(p, Split::Train)?;
                train.truncate(n);
                progress(&format!("features of {} training images for the neighbours", train.len()));
                let features = neighbour_bank(&cfg.checkpoint, &train, &device);
                (Some(train), features)
            }
        };
        let why = |e: &anyhow::Error| Some(format!("{e:#}"));
        let mut source = crate::reconstruct::file_name(&cfg.checkpoint);
        if let Some(header) = &header {
            source = format!("{source}, epoch {}", header.epoch);
        }
        let family = match config {
            ModelConfig::Swin(_) => "SimMIM on Swin",
            ref other => other.kind(),
        };
        let info = Info {
            model: format!("{family} ({source})"),
            img_size: config.img_size(),
            grid: config.grid(),
            channels: config.in_chans(),
            default_ratio: match config {
                ModelConfig::Mae(_) => crate::train::methods::Method::Mae.recipe().mask_ratio,
                ModelConfig::Beit(_) => crate::train::methods::Method::Beit.recipe().mask_ratio,
                ModelConfig::Swin(_) => crate::train::methods::Method::Simmim.recipe().mask_ratio,
            },
            default_strategy: match config {
                ModelConfig::Beit(_) => "block".into(),
                _ => "random".into(),
            },
            random_mask: match config {
                ModelConfig::Swin(_) => "SimMIM squares".into(),
                _ => "patches".into(),
            },
            no_reconstruction: reconstructor.as_ref().err().and_then(why),
            no_attention: attention.as_ref().err().and_then(why),
            no_neighbours: features.as_ref().err().and_then(why),
            no_tokens: beit.as_ref().err().and_then(why),
            neighbour_pool: train.as_ref().map_or(0, Dataset::len),
            dataset: data.as_ref().map(|d| DatasetInfo {
                name: d.name.clone(),
                split: cfg.split,
                len: d.len(),
                classes: d.classes.clone(),
                labels: d.labels.clone(),
            }),
            notes: weights.detected.assumed.iter().map(|(what, value)| format!("{what} = {value}")).collect(),
        };
        Ok(Viewer {
            info,
            config,
            scale: cfg.scale,
            reconstructor: reconstructor.ok(),
            input_norm,
            attention: attention.ok(),
            beit: beit.ok(),
            features: features.ok(),
            encoder_norm,
            data,
            train,
            uploads: Vec::new(),
            next_upload: 0,
            device,
        })
    }

    /// The model and data, for the page.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The image itself as a PNG, at its own size.
    pub fn image_png(&self, image: ImageRef) -> Result<Vec<u8>> {
        let img = match image {
            ImageRef::Dataset(i) | ImageRef::Train(i) => self.dataset(image, i)?.image(i)?,
            ImageRef::Upload(id) => self.upload(id)?.clone(),
        };
        let colour = if img.channels == 1 { image::ColorType::L8 } else { image::ColorType::Rgb8 };
        encode_png(&img.pixels, img.width as u32, img.height as u32, colour)
    }

    /// Keeps an uploaded photo (PNG or JPEG) and returns its id.
    pub fn add_upload(&mut self, bytes: &[u8]) -> Result<usize> {
        let img = crate::data::folder::decode_bytes(bytes, self.config.in_chans())?;
        ensure!(img.width > 0 && img.height > 0, "the image is empty");
        if self.uploads.len() == MAX_UPLOADS {
            self.uploads.remove(0);
        }
        let id = self.next_upload;
        self.next_upload += 1;
        self.uploads.push((id, img));
        Ok(id)
    }

    /// A mask of `strategy` (random, block or grid) removing about `ratio` of the patches, drawn
    /// from `seed`: `true` = removed, row-major.
    pub fn mask(&self, strategy: &str, ratio: f64, seed: u64) -> Result<Vec<bool>> {
        let grid = self.config.grid();
        let l = grid * grid;
        if let ("random", Some(model)) = (strategy, &self.reconstructor) {
            // As `mim reconstruct --seed --mask-ratio` draws it: patches for MAE, mask squares for SimMIM.
            let mask = model.mask(&MaskChoice::Random { ratio: Some(ratio), seed }, 1)?;
            return Ok(mask.mask.iter().map(|&v| v > 0.5).collect());
        }
        let strategy = match strategy {
            "random" => MaskStrategy::Random { ratio },
            "block" => MaskStrategy::Block(BlockMasking {
                // BEiT's 16-patch minimum block is for a 14x14 grid; scale it to small grids.
                min_num_patches: (l / 12).clamp(1, 16),
                ..BlockMasking::beit(((ratio * l as f64).round() as usize).clamp(1, l - 1))
            }),
            "grid" => MaskStrategy::Grid,
            other => bail!("unknown mask strategy '{other}': use random, block or grid"),
        };
        // The stream `mim reconstruct --seed` draws its random masks from.
        let mut rng = rng_for(&[seed, MASK_STREAM]);
        Ok(strategy.sample((grid, grid), 1, &mut rng)?.row(0).to_vec())
    }

    /// Reconstructs `image` with the patches `removed` (row-major) hidden from the model.
    pub fn reconstruct(&self, image: ImageRef, removed: &[bool]) -> Result<Reconstruction> {
        let Some(model) = &self.reconstructor else {
            bail!("{}", self.info.no_reconstruction.clone().unwrap_or_default())
        };
        let l = self.config.num_patches();
        ensure!(removed.len() == l, "the mask has {} patches but the model has {l}", removed.len());
        let visible: Vec<usize> = (0..l).filter(|&i| !removed[i]).collect();
        ensure!(!visible.is_empty(), "every patch is hidden: show at least one");
        let (batch, _, mean, std) = self.load(image, self.input_norm.as_ref())?;
        let start = Instant::now();
        let rows = model.reconstruct(&batch, &Mask::from_visible(&visible, 1, l)?, &mean, &std)?;
        let millis = start.elapsed().as_secs_f64() * 1e3;
        let (c, s) = (self.config.in_chans(), self.config.img_size());
        let picture = grid_image(&rows, (c, s, s), self.scale, "", &[])?;
        let png = encode_png(picture.as_raw(), picture.width(), picture.height(), image::ColorType::Rgb8)?;
        Ok(Reconstruction { png, removed: l - visible.len(), millis })
    }

    /// The attention over the patches of `image`, every layer and head (see
    /// [`AttentionEncoder::attention`]).
    pub fn attention(&self, image: ImageRef) -> Result<Attention> {
        let Some(encoder) = &self.attention else { bail!("{}", self.info.no_attention.clone().unwrap_or_default()) };
        let (batch, ..) = self.load(image, Some(&self.encoder_norm))?;
        let start = Instant::now();
        let found = encoder.attention(batch.tensor(&self.device))?;
        let millis = start.elapsed().as_secs_f64() * 1e3;
        let maps = found.maps.into_iter().map(|mut layer| layer.swap_remove(0)).collect();
        Ok(Attention { maps, grids: found.grids, what: found.what.to_string(), millis })
    }

    /// `image`'s visual tokens and BEiT's predictions at the patches `removed` (row-major).
    pub fn tokens(&self, image: ImageRef, removed: &[bool]) -> Result<Tokens> {
        let Some((beit, tokenizer)) = &self.beit else { bail!("{}", self.info.no_tokens.clone().unwrap_or_default()) };
        let (l, g) = (self.config.num_patches(), self.config.grid());
        ensure!(removed.len() == l, "the mask has {} patches but the model has {l}", removed.len());
        let (batch, _, mean, std) = self.load(image, self.input_norm.as_ref())?;
        let start = Instant::now();
        let imgs = batch.tensor(&self.device);
        let ids = ints(tokenizer.encode_ids(imgs.clone())?)?;
        let mask = BoolMask::new(removed.to_vec(), 1, (g, g))?;
        let (mut predicted, mut guessed) = (vec![None; l], ids.clone());
        if mask.count() > 0 {
            let guesses = ints(beit.forward(imgs, &mask).argmax(1))?;
            for (slot, guess) in (0..l).filter(|&i| removed[i]).zip(guesses) {
                predicted[slot] = Some(guess as u32);
                guessed[slot] = guess;
            }
        }
        let decode = |ids: &[i64]| -> Result<Vec<f32>> {
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, l]), &self.device);
            let pixels = tokenizer.decode_ids(ids)?.into_data().convert::<f32>();
            let pixels =
                pixels.try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("cannot read the decoded image: {e:?}"))?;
            Ok(denormalize(&pixels, &mean, &std))
        };
        let (through_tokens, through_guesses) = (decode(&ids)?, decode(&guessed)?);
        let millis = start.elapsed().as_secs_f64() * 1e3;

        let (c, s) = (self.config.in_chans(), self.config.img_size());
        let original = denormalize(&batch.images, &mean, &std);
        let p = s / g;
        // Hidden patches in mid-grey, as the reconstruction's `masked` panel.
        let masked: Vec<f32> = (0..c * s * s)
            .map(|i| {
                let (y, x) = ((i / s) % s, i % s);
                if removed[(y / p).min(g - 1) * g + (x / p).min(g - 1)] { 0.5 } else { original[i] }
            })
            .collect();
        let picture = panels_image(
            &[vec![original, masked, through_tokens, through_guesses]],
            (c, s, s),
            self.scale,
            &Captions::default(),
        )?;
        let correct = (0..l).filter(|&i| predicted[i].is_some_and(|t| i64::from(t) == ids[i])).count();
        Ok(Tokens {
            ids: ids.iter().map(|&t| t as u32).collect(),
            predicted,
            correct,
            vocab: tokenizer.codebook.val().dims()[0],
            png: encode_png(picture.as_raw(), picture.width(), picture.height(), image::ColorType::Rgb8)?,
            millis,
        })
    }

    /// The `k` training images whose encoder features are nearest to `image`'s (cosine).
    pub fn neighbours(&self, image: ImageRef, k: usize) -> Result<Vec<Neighbour>> {
        let (Some((encoder, bank)), Some(train)) = (&self.features, &self.train) else {
            bail!("{}", self.info.no_neighbours.clone().unwrap_or_default())
        };
        // The bank was extracted with the training data's statistics, the query must be too.
        let norm = (train.mean.clone(), train.std.clone());
        let (batch, ..) = self.load(image, Some(&norm))?;
        let mut q = crate::eval::host((encoder.encode)(batch.tensor(&self.device)));
        unit(&mut q);
        // The bank's rows are unit vectors already (see `neighbour_bank`): dot products are cosines.
        let mut scored: Vec<(usize, f32)> = bank
            .values
            .chunks(bank.dim)
            .enumerate()
            .map(|(i, f)| (i, f.iter().zip(&q).map(|(a, b)| a * b).sum()))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(scored
            .into_iter()
            .take(k)
            .map(|(index, similarity)| Neighbour {
                index,
                class: train.classes.get(bank.labels[index] as usize).cloned().unwrap_or_default(),
                similarity,
            })
            .collect())
    }

    /// The dataset holding `image` (a dataset or training image), once `i` is checked to be in it.
    fn dataset(&self, image: ImageRef, i: usize) -> Result<&Dataset> {
        let ds = if matches!(image, ImageRef::Dataset(_)) { &self.data } else { &self.train };
        let ds = ds.as_ref().context("no dataset: pass --data")?;
        ensure!(i < ds.len(), "image {i} is out of range: the dataset has {} images", ds.len());
        Ok(ds)
    }

    fn upload(&self, id: usize) -> Result<&Image> {
        self.uploads.iter().find(|(i, _)| *i == id).map(|(_, img)| img).with_context(|| {
            format!("no uploaded photo {id}: upload it again (the viewer keeps the last {MAX_UPLOADS})")
        })
    }

    /// `image` as a batch of one at the model's input, normalised with `norm` (`None`: the
    /// dataset's own statistics; for uploads, the browsed dataset's).
    fn load(&self, image: ImageRef, norm: Option<&(Vec<f32>, Vec<f32>)>) -> Result<LoadedImages> {
        match image {
            ImageRef::Dataset(i) | ImageRef::Train(i) => {
                load_dataset_images(self.dataset(image, i)?, &[i], &self.config, norm)
            }
            ImageRef::Upload(id) => {
                let c = self.config.in_chans();
                let (mean, std) = match (norm, &self.data) {
                    (Some(n), _) => n.clone(),
                    (None, Some(d)) if d.channels == c => (d.mean.clone(), d.std.clone()),
                    _ => self.encoder_norm.clone(),
                };
                let batch = decoded_batch(std::slice::from_ref(self.upload(id)?), self.config.img_size(), &mean, &std);
                Ok((batch, vec![format!("upload {id}")], mean, std))
            }
        }
    }
}

/// The encoder's features of every image of `train`, as `mim knn` computes them (cls pooling).
fn neighbour_bank(checkpoint: &Path, train: &Dataset, device: &Device) -> Result<(FeatureEncoder, Features)> {
    let encoder = Backbone::Checkpoint(checkpoint.to_path_buf())
        .encoder(train.channels, Pool::Cls, device)?
        .context("no encoder")?;
    let mut features =
        crate::eval::extract(Some(&*encoder.encode), train, encoder.config.img_size(), 256, device, &mut |_| {})?;
    // Normalised once here rather than on every query.
    let dim = features.dim;
    features.values.chunks_mut(dim).for_each(unit);
    Ok((encoder, features))
}

/// Scales `v` to unit length (left as is when it is zero).
fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// The BEiT of a checkpoint or weights file and its tokenizer: `--tokenizer`, else the one the
/// checkpoint's run was trained with.
fn beit_with_tokenizer(
    cfg: &ViewerConfig,
    weights: &crate::weights::Weights,
    config: &crate::models::beit::BeitConfig,
    header: Option<&crate::checkpoint::CheckpointHeader>,
    device: &Device,
) -> Result<(BeitForMaskedImageModeling, VqTokenizer)> {
    let named = header.and_then(|h| h.train.get("tokenizer")).and_then(|t| t.as_str()).map(PathBuf::from);
    let tokenizer = match (cfg.tokenizer.clone(), named) {
        (Some(path), _) | (None, Some(path)) => path,
        (None, None) if header.is_some() => {
            bail!("the checkpoint names no tokenizer (its run was not trained with --tokenizer): pass --tokenizer FILE")
        }
        (None, None) => {
            bail!("a weights file carries no tokenizer: pass --tokenizer FILE, the one the BEiT was trained with")
        }
    };
    let tokenizer = crate::train::tokenizer::load_tokenizer(&tokenizer, device)
        .with_context(|| format!("the tokenizer '{}'", tokenizer.display()))?;
    tokenizer.header.model.check_matches(config)?;
    let beit = match header {
        Some(_) => {
            crate::checkpoint::load_model(&cfg.checkpoint, device, <BeitForMaskedImageModeling as MimModel>::build)?
                .model
        }
        None => weights.beit(device)?,
    };
    Ok((beit, tokenizer.model))
}

/// The integers of an integer tensor.
fn ints<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| anyhow::anyhow!("cannot read the token ids: {e:?}"))
}

/// The data a mim checkpoint was trained on, when recorded.
fn trained_on(header: &crate::checkpoint::CheckpointHeader) -> Option<PathBuf> {
    header.train.get("run")?.get("data")?.as_str().map(PathBuf::from)
}

fn encode_png(pixels: &[u8], width: u32, height: u32, colour: image::ColorType) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        pixels,
        width,
        height,
        colour.into(),
    )
    .context("cannot encode the PNG")?;
    Ok(out)
}
