//! Patch masking. MAE's per-sample random masking: shuffle the patches by argsort of uniform noise,
//! keep the first `(1 - ratio) * L`, and remember how to undo the shuffle.
//!
//! Masks are computed on the host from host noise, so a seed gives the same masks on every
//! backend, and a mask can also be given explicitly (for parity tests and figures).

use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;

/// A batch of patch masks, in the shape the official `random_masking` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Batch size B.
    pub batch: usize,
    /// Patches per image L.
    pub num_patches: usize,
    /// Visible patches per image K.
    pub len_keep: usize,
    /// `[B * K]`: indices of the visible patches, in shuffled order.
    pub ids_keep: Vec<usize>,
    /// `[B * L]`: position of each patch in the shuffled order (the argsort of the shuffle).
    pub ids_restore: Vec<usize>,
    /// `[B * L]`: 1 for a masked (removed) patch, 0 for a visible one.
    pub mask: Vec<f32>,
}

/// Number of visible patches for a mask ratio, as the official code: `int(L * (1 - ratio))`.
pub fn len_keep(num_patches: usize, mask_ratio: f64) -> usize {
    (num_patches as f64 * (1.0 - mask_ratio)) as usize
}

/// Checks a mask ratio is in the open interval (0, 1).
pub fn check_ratio(mask_ratio: f64) -> Result<()> {
    ensure!(
        mask_ratio > 0.0 && mask_ratio < 1.0,
        "mask ratio {mask_ratio} is outside (0, 1): pass e.g. --mask-ratio 0.75 (the MAE default)"
    );
    Ok(())
}

/// `[B * L]` uniform noise in [0, 1) from `rng`.
pub fn uniform_noise(rng: &mut impl Rng, batch: usize, num_patches: usize) -> Vec<f32> {
    (0..batch * num_patches).map(|_| rng.r#gen::<f32>()).collect()
}

impl Mask {
    /// MAE random masking from noise `[B * L]`: patches with the smallest noise stay visible.
    pub fn from_noise(noise: &[f32], batch: usize, mask_ratio: f64) -> Result<Self> {
        check_ratio(mask_ratio)?;
        ensure!(batch > 0 && noise.len() % batch == 0, "noise of length {} does not split into {batch} rows", noise.len());
        let l = noise.len() / batch;
        let keep = len_keep(l, mask_ratio);
        ensure!(keep > 0, "mask ratio {mask_ratio} leaves no visible patch out of {l}: lower it");
        let shuffles = noise.chunks(l).map(|row| {
            let mut ids: Vec<usize> = (0..l).collect();
            ids.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
            ids
        });
        Ok(Self::from_shuffles(shuffles, batch, l, keep))
    }

    /// Masking that keeps exactly the given patches visible in every image of a batch (for
    /// reconstructions of a chosen mask). Indices are row-major patch positions.
    pub fn from_visible(visible: &[usize], batch: usize, num_patches: usize) -> Result<Self> {
        let mut seen = vec![false; num_patches];
        for &i in visible {
            ensure!(i < num_patches, "visible patch index {i} is out of range: the image has {num_patches} patches (0..{num_patches})");
            ensure!(!seen[i], "visible patch index {i} is listed twice");
            seen[i] = true;
        }
        if visible.is_empty() || visible.len() == num_patches {
            bail!("an explicit mask must leave between 1 and {} of {num_patches} patches visible", num_patches - 1);
        }
        let order: Vec<usize> = visible.iter().copied().chain((0..num_patches).filter(|&i| !seen[i])).collect();
        Ok(Self::from_shuffles(std::iter::repeat_n(order, batch), batch, num_patches, visible.len()))
    }

    /// No masking: every patch visible, in order. Not a training mode of MAE; it measures the cost of
    /// an encoder that sees every token (the paper's Table 2 comparison).
    pub fn keep_all(batch: usize, num_patches: usize) -> Self {
        Self::from_shuffles(std::iter::repeat_n((0..num_patches).collect(), batch), batch, num_patches, num_patches)
    }

    /// Whether at least one patch is removed.
    pub fn removes_any(&self) -> bool {
        self.len_keep < self.num_patches
    }

    fn from_shuffles(shuffles: impl Iterator<Item = Vec<usize>>, batch: usize, l: usize, keep: usize) -> Self {
        let mut m = Mask {
            batch,
            num_patches: l,
            len_keep: keep,
            ids_keep: Vec::with_capacity(batch * keep),
            ids_restore: vec![0; batch * l],
            mask: vec![1.0; batch * l],
        };
        for (b, shuffle) in shuffles.enumerate() {
            for (pos, &patch) in shuffle.iter().enumerate() {
                m.ids_restore[b * l + patch] = pos;
            }
            for &patch in &shuffle[..keep] {
                m.ids_keep.push(patch);
                m.mask[b * l + patch] = 0.0;
            }
        }
        m
    }

    /// `[B, K]` visible patch indices on `device`.
    pub fn ids_keep_tensor(&self, device: &Device) -> Tensor<2, Int> {
        int_tensor(&self.ids_keep, [self.batch, self.len_keep], device)
    }

    /// `[B, L]` restore indices on `device`.
    pub fn ids_restore_tensor(&self, device: &Device) -> Tensor<2, Int> {
        int_tensor(&self.ids_restore, [self.batch, self.num_patches], device)
    }

    /// `[B, L]` 0/1 mask on `device`.
    pub fn mask_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.mask.clone(), [self.batch, self.num_patches]), device)
    }
}

fn int_tensor(v: &[usize], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_masking_keeps_the_lowest_noise_patches_and_restores_order() {
        let noise = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4];
        let m = Mask::from_noise(&noise, 2, 0.5).unwrap();
        assert_eq!(m.ids_keep, vec![1, 3, 1, 3]);
        assert_eq!(m.mask, vec![1., 0., 1., 0., 1., 0., 1., 0.]);
        // ids_restore is the argsort of the shuffle [1, 3, 2, 0]
        assert_eq!(&m.ids_restore[..4], &[3, 0, 2, 1]);
    }

    #[test]
    fn random_masking_achieves_the_ratio_per_image() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let noise = uniform_noise(&mut rng, 8, 49);
        let m = Mask::from_noise(&noise, 8, 0.75).unwrap();
        for row in m.mask.chunks(49) {
            assert_eq!(row.iter().sum::<f32>() as usize, 49 - 12);
        }
    }

    #[test]
    fn explicit_visible_patches_are_the_unmasked_ones() {
        let m = Mask::from_visible(&[5, 0], 2, 9).unwrap();
        assert_eq!(m.len_keep, 2);
        assert_eq!(m.ids_keep, vec![5, 0, 5, 0]);
        assert_eq!(m.mask.iter().filter(|&&v| v == 0.0).count(), 4);
        assert_eq!(m.mask[0], 0.0);
        assert_eq!(m.mask[5], 0.0);
    }

    #[test]
    fn bad_ratios_and_indices_are_rejected_with_a_hint() {
        assert!(Mask::from_noise(&[0.1, 0.2], 1, 1.0).unwrap_err().to_string().contains("outside (0, 1)"));
        assert!(Mask::from_noise(&[0.1, 0.2], 1, 0.0).is_err());
        assert!(Mask::from_visible(&[9], 1, 9).unwrap_err().to_string().contains("out of range"));
    }
}
