//! Datasets and the input pipeline.
//!
//! [`Dataset::open`] picks a reader by what it finds at a path: IDX files (MNIST / Fashion-MNIST,
//! raw or `.gz`), CIFAR-10 binary batches, or an image folder in ImageNet layout (one sub-folder per
//! class). Images stay `u8`; [`augment`] turns them into normalised `f32` tensors (resampling with
//! [`resize`]) and [`loader`] does so on a worker thread ahead of the training step.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod resize;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images.
    Train,
    /// Held-out images (`t10k` for IDX, `test_batch` for CIFAR, `val/` for folders).
    Test,
}

/// A decoded image: `u8` pixels in `[height, width, channels]` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// `[H * W * C]`
    pub pixels: Vec<u8>,
}

/// Where the pixels of a dataset live.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Same-size images held in memory, `[N, H, W, C]`.
    Memory {
        /// Image width.
        width: usize,
        /// Image height.
        height: usize,
        /// All pixels.
        pixels: Vec<u8>,
    },
    /// Image files decoded on demand (on the loader's worker thread).
    Files(Vec<PathBuf>),
}

/// A labelled image dataset with its per-channel normalisation statistics.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Human-readable description (format and path).
    pub name: String,
    /// Channels of every image (1 or 3).
    pub channels: usize,
    /// Pixels.
    pub storage: Storage,
    /// Class index per image.
    pub labels: Vec<u32>,
    /// Class names (index = label); empty where the images come without labels (IDX images whose
    /// labels file is missing), which serve pretraining only.
    pub classes: Vec<String>,
    /// Per-channel mean of the `[0, 1]` pixels, used for normalisation.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the `[0, 1]` pixels.
    pub std: Vec<f32>,
}

/// The Fashion-MNIST subset shipped in the repository (relative to its root): the default data of the
/// demo, the tests and every command, so they run with no install and no network.
pub const SHIPPED_SUBSET: &str = "data/fashion-mnist-subset";

/// Fashion-MNIST class names.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

impl Dataset {
    /// Opens the dataset at `path`, choosing the reader by what is there.
    pub fn open(path: &Path, split: Split) -> Result<Self> {
        if !path.exists() {
            bail!(
                "data path '{}' does not exist: pass --data with an IDX folder (e.g. data/fashion-mnist-subset, or \
                 /usr/share/datasets/fashion-mnist from the Debian package dataset-fashion-mnist), a CIFAR-10 binary \
                 folder, or an image folder with one sub-folder per class",
                path.display()
            );
        }
        if idx::detect(path) {
            return idx::open(path, split);
        }
        if cifar::detect(path) {
            return cifar::open(path, split);
        }
        if path.is_dir() {
            return folder::open(path, split);
        }
        bail!(
            "cannot tell what dataset '{}' is: expected IDX files (*-images-idx3-ubyte[.gz]), CIFAR-10 binary batches \
             (data_batch_*.bin, test_batch.bin) or a folder of class sub-folders with PNG/JPEG images",
            path.display()
        )
    }

    /// The train and test splits at `path` for an evaluation (k-NN, probes, fine-tuning): see
    /// [`Dataset::check_test_split`].
    pub fn open_labelled(path: &Path) -> Result<(Self, Self)> {
        let (train, test) = (Self::open(path, Split::Train)?, Self::open(path, Split::Test)?);
        train.check_test_split(&test)?;
        Ok((train, test))
    }

    /// Checks that `test` can score a model trained on `self`: both labelled, with the same classes,
    /// and other images (a dataset without a test split of its own opens its training images for
    /// both, and would report training accuracy as test accuracy).
    pub fn check_test_split(&self, test: &Self) -> Result<()> {
        for d in [self, test] {
            ensure!(
                !d.classes.is_empty(),
                "{} has no labels, which an evaluation needs: put the *-labels-idx1-ubyte file beside the images",
                d.name
            );
        }
        ensure!(
            self.name != test.name,
            "{} has no test split of its own, so an evaluation would score the training images: give a folder with \
             train/ and val/ (or test/) class folders, a CIFAR-10 folder with test_batch.bin, or an IDX folder with \
             the t10k-* files",
            self.name
        );
        if self.classes != test.classes {
            let at = self.classes.iter().zip(&test.classes).take_while(|(a, b)| a == b).count();
            let name = |c: &[String]| c.get(at).map_or("none".into(), |n| format!("'{n}'"));
            bail!(
                "the splits have different classes ({} and {}; class {at} is {} in {} and {} in {}): give both \
                 splits the same class folders (an empty one counts)",
                self.classes.len(),
                test.classes.len(),
                name(&self.classes),
                self.name,
                name(&test.classes),
                test.name
            );
        }
        Ok(())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`, decoded.
    pub fn image(&self, i: usize) -> Result<Image> {
        match &self.storage {
            Storage::Memory { width, height, pixels } => {
                let n = width * height * self.channels;
                Ok(Image {
                    width: *width,
                    height: *height,
                    channels: self.channels,
                    pixels: pixels[i * n..(i + 1) * n].to_vec(),
                })
            }
            Storage::Files(paths) => folder::decode(&paths[i], self.channels),
        }
    }

    /// Keeps only the first `n` images (for quick runs).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        self.labels.truncate(n);
        match &mut self.storage {
            Storage::Memory { width, height, pixels } => pixels.truncate(n * *width * *height * self.channels),
            Storage::Files(paths) => paths.truncate(n),
        }
    }
}
