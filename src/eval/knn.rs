//! Weighted k-nearest-neighbour classification on frozen features (the monitor of DINO and of many
//! MIM papers): cosine similarity to every training vector, the `k` most similar vote for their
//! class with weight `exp(similarity / temperature)`.

use anyhow::{Result, ensure};
use burn::tensor::{Device, Tensor, TensorData};

use super::{Features, host, topk_accuracy};

/// k-NN settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnConfig {
    /// Neighbours that vote.
    pub k: usize,
    /// Softness of the vote weights.
    pub temperature: f64,
}

impl Default for KnnConfig {
    /// k = 20, temperature 0.07 (DINO's defaults).
    fn default() -> Self {
        Self { k: 20, temperature: 0.07 }
    }
}

impl KnnConfig {
    /// Checks the settings before any feature is extracted, naming the flag.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.k > 0, "--k must be at least 1");
        ensure!(
            self.temperature.is_finite() && self.temperature > 0.0,
            "--temperature {} must be a finite value > 0 (the vote weights are exp(similarity / temperature))",
            self.temperature
        );
        Ok(())
    }
}

/// Rows scaled to unit length.
fn normalised(f: &Features) -> Features {
    let mut values = f.values.clone();
    for row in values.chunks_mut(f.dim) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
    Features { dim: f.dim, values, labels: f.labels.clone() }
}

/// Top-1 and top-5 accuracy (percent) of `test` classified by its neighbours in `train`.
pub fn knn_accuracy(
    train: &Features,
    test: &Features,
    classes: usize,
    cfg: KnnConfig,
    device: &Device,
) -> Result<(f64, f64)> {
    cfg.validate()?;
    ensure!(train.dim == test.dim, "train and test features differ in width ({} vs {})", train.dim, test.dim);
    ensure!(cfg.k <= train.len(), "k = {} must be between 1 and the {} training vectors", cfg.k, train.len());
    let (train, test) = (normalised(train), normalised(test));
    let bank = train.tensor(device).transpose();
    let mut scores = Vec::with_capacity(test.len() * classes);
    // Similarities of a chunk of test rows at a time keep memory at chunk x N.
    let chunk = (1 << 24) / train.len().max(1);
    for start in (0..test.len()).step_by(chunk.max(1)) {
        let end = (start + chunk.max(1)).min(test.len());
        let rows = test.values[start * test.dim..end * test.dim].to_vec();
        let q = Tensor::<2>::from_data(TensorData::new(rows, [end - start, test.dim]), device);
        let sim = host(q.matmul(bank.clone()));
        for row in sim.chunks(train.len()) {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.select_nth_unstable_by(cfg.k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            let mut votes = vec![0.0f32; classes];
            for &j in &idx[..cfg.k] {
                votes[train.labels[j] as usize] += ((row[j] as f64) / cfg.temperature).exp() as f32;
            }
            scores.extend(votes);
        }
    }
    Ok(topk_accuracy(&scores, classes, &test.labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_in_the_same_direction_decide_the_class() {
        // Class 0 points along x, class 1 along y; test points lean clearly one way.
        let train =
            Features { dim: 2, values: vec![1.0, 0.1, 2.0, -0.1, 0.1, 1.0, -0.1, 3.0], labels: vec![0, 0, 1, 1] };
        let test = Features { dim: 2, values: vec![5.0, 1.0, 0.5, 4.0], labels: vec![0, 1] };
        let (top1, _) = knn_accuracy(&train, &test, 2, KnnConfig { k: 2, temperature: 0.07 }, &Device::flex()).unwrap();
        assert_eq!(top1, 100.0);
        let wrong = Features { dim: 2, values: test.values.clone(), labels: vec![1, 0] };
        let (top1, _) =
            knn_accuracy(&train, &wrong, 2, KnnConfig { k: 2, temperature: 0.07 }, &Device::flex()).unwrap();
        assert_eq!(top1, 0.0);
    }
}
