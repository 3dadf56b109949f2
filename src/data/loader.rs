//! Batches on a worker thread, ahead of the training step.
//!
//! Everything random is derived from `(seed, epoch, image index)`, not from a running generator,
//! so a batch is the same whatever the thread timing, and a resumed run sees the same batches as
//! an uninterrupted one.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::Dataset;
use super::augment::Transform;

/// A batch of normalised images `[B, C, S, S]` with labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B * C * S * S]`
    pub images: Vec<f32>,
    /// `[B]`
    pub labels: Vec<u32>,
    /// Dataset index of each image.
    pub indices: Vec<usize>,
    /// Channels C.
    pub channels: usize,
    /// Image side S.
    pub side: usize,
}

impl Batch {
    /// Images per batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as a `[B, C, S, S]` tensor.
    pub fn tensor(&self, device: &Device) -> Tensor<4> {
        let shape = [self.len(), self.channels, self.side, self.side];
        Tensor::from_data(TensorData::new(self.images.clone(), shape), device)
    }
}

/// A generator seeded from several integers (SplitMix64 mixing, so nearby inputs decorrelate).
pub fn rng_for(parts: &[u64]) -> ChaCha8Rng {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// The order in which an epoch visits the dataset: a seeded permutation.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng_for(&[seed, epoch, 0x5EED]));
    order
}

/// Decodes and transforms `indices` into one batch (augmentation seeded by `(seed, epoch, index)`).
pub fn load_batch(ds: &Dataset, transform: &Transform, indices: &[usize], seed: u64, epoch: u64) -> Result<Batch> {
    let s = transform.size();
    let per = ds.channels * s * s;
    let mut images = vec![0.0f32; indices.len() * per];
    for (k, &i) in indices.iter().enumerate() {
        let img = ds.image(i)?;
        let mut rng = rng_for(&[seed, epoch, i as u64]);
        transform.apply(&img, &ds.mean, &ds.std, &mut rng, &mut images[k * per..(k + 1) * per]);
    }
    Ok(Batch {
        images,
        labels: indices.iter().map(|&i| ds.labels[i]).collect(),
        indices: indices.to_vec(),
        channels: ds.channels,
        side: s,
    })
}

/// Every image of `ds` in order, resized to `side` (no augmentation), `batch` at a time.
pub fn for_each_batch(ds: &Dataset, side: usize, batch: usize, mut f: impl FnMut(Batch) -> Result<()>) -> Result<()> {
    let transform = Transform::Resize { size: side };
    let all: Vec<usize> = (0..ds.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        f(load_batch(ds, &transform, chunk, 0, 0)?)?;
    }
    Ok(())
}

/// Batches of one epoch, produced by a worker thread a few batches ahead.
pub struct Prefetcher {
    rx: Receiver<Result<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts producing the full batches of `order` (the last partial batch is dropped, as MAE's
    /// `drop_last`), beginning at batch `first_batch`, keeping at most `depth` batches ready.
    pub fn spawn(
        ds: Arc<Dataset>,
        transform: Transform,
        order: Vec<usize>,
        batch_size: usize,
        first_batch: usize,
        seed: u64,
        epoch: u64,
        depth: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("mim-loader".into())
            .spawn(move || {
                for chunk in order.chunks_exact(batch_size).skip(first_batch) {
                    let batch = load_batch(&ds, &transform, chunk, seed, epoch);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("cannot start the data loader thread");
        Self { rx, handle: Some(handle) }
    }
}

impl Iterator for Prefetcher {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Unblock a worker waiting on a full channel, then wait for it.
        while self.rx.try_recv().is_ok() {}
        let rx = std::mem::replace(&mut self.rx, sync_channel(1).1);
        drop(rx);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
