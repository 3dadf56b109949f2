//! Patch masking for every method in mim, one module:
//!
//! - [`Mask`]: MAE's per-sample random masking: shuffle the patches by argsort of uniform noise,
//!   keep the first `(1 - ratio) * L`, and remember how to undo the shuffle. MAE's encoder drops
//!   the masked patches, so every image must keep the same number K.
//! - [`BoolMask`]: per-sample boolean masks over the patch grid (BEiT's `bool_masked_pos`, SimMIM's
//!   mask), whose masked count may vary per image, produced by a [`MaskStrategy`]: BEiT's block-wise
//!   [`BlockMasking`], MAE's grid ablation, SimMIM's [`SimMimMasking`], or random.
//!   [`BoolMask::to_mae_mask`] turns one into a [`Mask`] with an exact visible count.
//!
//! Masks are computed on the host from a seeded host RNG, so a seed gives the same masks on every
//! backend, and a mask can also be given explicitly (for parity tests and figures).

use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Random stream id of the masking noise (`rng_for(&[seed, .., MASK_STREAM])`), kept apart from the
/// augmentation and shuffling streams; pretraining and reconstruction pictures draw from it.
pub const MASK_STREAM: u64 = 0x4D41534B;

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
        ensure!(
            batch > 0 && noise.len().is_multiple_of(batch),
            "noise of length {} does not split into {batch} rows",
            noise.len()
        );
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
            ensure!(
                i < num_patches,
                "visible patch index {i} is out of range: the image has {num_patches} patches (0..{num_patches})"
            );
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

    /// `[B * R]`: the patches the loss is computed on, ascending per image: the removed ones
    /// (`R = L - K`), or every patch when nothing is removed ([`Mask::keep_all`], whose loss averages
    /// over all patches).
    pub fn ids_target(&self) -> Vec<usize> {
        let all = !self.removes_any();
        (0..self.batch * self.num_patches)
            .filter(|&i| all || self.mask[i] > 0.5)
            .map(|i| i % self.num_patches)
            .collect()
    }

    /// `[B, R]` [`Mask::ids_target`] on `device`.
    pub fn ids_target_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let ids = self.ids_target();
        int_tensor(&ids, [self.batch, ids.len() / self.batch], device)
    }

    /// `[B, L]` 0/1 mask on `device`.
    pub fn mask_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.mask.clone(), [self.batch, self.num_patches]), device)
    }
}

fn int_tensor<const D: usize>(v: &[usize], shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), shape), device)
}

/// Per-sample boolean masks over a grid of patches (`true` = masked), BEiT's `bool_masked_pos`.
/// Unlike [`Mask`], the number of masked patches may differ between images.
#[derive(Debug, Clone, PartialEq)]
pub struct BoolMask {
    /// Batch size B.
    pub batch: usize,
    /// Patch grid `(rows, cols)`; L = rows * cols.
    pub grid: (usize, usize),
    /// `[B * L]`, row-major patches of each image in turn.
    pub masked: Vec<bool>,
}

impl BoolMask {
    /// Masks of `batch` images over `grid` from `[B * L]` flags.
    pub fn new(masked: Vec<bool>, batch: usize, grid: (usize, usize)) -> Result<Self> {
        let l = grid.0 * grid.1;
        ensure!(
            masked.len() == batch * l,
            "a boolean mask of {} flags does not fit {batch} images of {}x{} patches ({} flags)",
            masked.len(),
            grid.0,
            grid.1,
            batch * l
        );
        Ok(Self { batch, grid, masked })
    }

    /// Patches per image L.
    pub fn num_patches(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// The flags of image `b`.
    pub fn row(&self, b: usize) -> &[bool] {
        let l = self.num_patches();
        &self.masked[b * l..(b + 1) * l]
    }

    /// Masked patches in the whole batch (the rows of BEiT's `x[bool_masked_pos]`).
    pub fn count(&self) -> usize {
        self.masked.iter().filter(|&&m| m).count()
    }

    /// `[B, L, 1]` 0/1 weights, 1 at masked patches (BEiT's `w` in `x * (1 - w) + mask_token * w`).
    pub fn weights_tensor(&self, device: &Device) -> Tensor<3> {
        let v: Vec<f32> = self.masked.iter().map(|&m| m as u8 as f32).collect();
        Tensor::from_data(TensorData::new(v, [self.batch, self.num_patches(), 1]), device)
    }

    /// `[M]` flat indices `b * L + l` of the masked patches in row-major (image, patch) order: the
    /// order of PyTorch's boolean indexing `x[bool_masked_pos]`.
    pub fn masked_indices_tensor(&self, device: &Device) -> Tensor<1, Int> {
        let ids: Vec<usize> = self.masked.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i).collect();
        int_tensor(&ids, [ids.len()], device)
    }

    /// An MAE [`Mask`] keeping exactly `len_keep` visible patches per image. MAE's encoder needs
    /// the same count in every image, so the rule is: keep this mask's visible patches, and if an
    /// image has more than `len_keep` of them, mask randomly chosen extra ones (trim); if it has
    /// fewer, unmask randomly chosen masked ones (top up). Masks that already have the count (grid
    /// masking at ratio 0.75 on an even grid) are unchanged. Visible patches are listed in row-major
    /// order in `ids_keep`.
    pub fn to_mae_mask(&self, len_keep: usize, rng: &mut impl Rng) -> Result<Mask> {
        let l = self.num_patches();
        ensure!(
            len_keep > 0 && len_keep < l,
            "an MAE mask must keep between 1 and {} of {l} patches, not {len_keep}",
            l - 1
        );
        let shuffles: Vec<Vec<usize>> = (0..self.batch)
            .map(|b| {
                let (mut visible, mut masked): (Vec<usize>, Vec<usize>) = (0..l).partition(|&i| !self.row(b)[i]);
                // Move randomly chosen patches across the boundary until exactly len_keep are visible.
                if visible.len() > len_keep {
                    visible.shuffle(rng);
                    masked.extend(visible.drain(len_keep..));
                } else {
                    masked.shuffle(rng);
                    visible.extend(masked.drain(..len_keep - visible.len()));
                }
                visible.sort_unstable();
                masked.sort_unstable();
                visible.into_iter().chain(masked).collect()
            })
            .collect();
        Ok(Mask::from_shuffles(shuffles.into_iter(), self.batch, l, len_keep))
    }
}

/// BEiT's block-wise masking (the official `MaskingGenerator` of microsoft/unilm `beit/`): masks
/// random rectangles of at least `min_num_patches` patches with an aspect ratio drawn log-uniformly
/// in `[min_aspect, max_aspect]` until `num_masking_patches` are masked, giving up when ten
/// consecutive draws add nothing. BEiT pretraining at 224 px: 75 of 196 patches, blocks of at least
/// 16, aspect in [0.3, 1/0.3].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockMasking {
    /// Target number of masked patches per image.
    pub num_masking_patches: usize,
    /// Smallest target block area.
    pub min_num_patches: usize,
    /// Largest target block area; `None` means `num_masking_patches` (the official default).
    pub max_num_patches: Option<usize>,
    /// Smallest block aspect ratio (height / width).
    pub min_aspect: f64,
    /// Largest aspect ratio; `None` means `1 / min_aspect` (the official default).
    pub max_aspect: Option<f64>,
}

/// One rectangle placed by [`BlockMasking`], with the draw it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskBlock {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Drawn target area, before rounding the sides.
    pub target_area: f64,
    /// Drawn aspect ratio (height / width), before rounding the sides.
    pub aspect: f64,
    /// Patches this block newly masked (it may overlap earlier blocks).
    pub added: usize,
}

/// Attempts per block before the official generator gives up on the image.
const BLOCK_ATTEMPTS: usize = 10;

impl BlockMasking {
    /// BEiT pretraining's settings: blocks of at least 16 patches, aspect in [0.3, 1/0.3], up to
    /// `num_masking_patches` (75 for the 14x14 grid at 224 px).
    pub fn beit(num_masking_patches: usize) -> Self {
        Self { num_masking_patches, min_num_patches: 16, max_num_patches: None, min_aspect: 0.3, max_aspect: None }
    }

    fn aspect_range(&self) -> (f64, f64) {
        (self.min_aspect, self.max_aspect.unwrap_or(1.0 / self.min_aspect))
    }

    /// Checks the settings fit a `grid` of patches.
    pub fn validate(&self, grid: (usize, usize)) -> Result<()> {
        let l = grid.0 * grid.1;
        ensure!(
            self.num_masking_patches > 0 && self.num_masking_patches < l,
            "block masking of {} patches does not fit a {}x{} grid: choose between 1 and {}",
            self.num_masking_patches,
            grid.0,
            grid.1,
            l - 1
        );
        ensure!(self.min_num_patches > 0, "block masking needs min_num_patches >= 1 (BEiT uses 16)");
        let (lo, hi) = self.aspect_range();
        ensure!(
            lo > 0.0 && lo <= hi,
            "block aspect range [{lo}, {hi}] is empty or not positive: use e.g. min_aspect 0.3"
        );
        Ok(())
    }

    /// One image's mask over `grid` (row-major, `true` = masked) and the blocks placed.
    pub fn sample_blocks(&self, grid: (usize, usize), rng: &mut impl Rng) -> (Vec<bool>, Vec<MaskBlock>) {
        let mut mask = vec![false; grid.0 * grid.1];
        let mut blocks = Vec::new();
        let mut count = 0;
        let cap = self.max_num_patches.unwrap_or(self.num_masking_patches);
        while count < self.num_masking_patches {
            let max_mask_patches = (self.num_masking_patches - count).min(cap);
            match self.place_block(&mut mask, grid, max_mask_patches, rng) {
                Some(block) => {
                    count += block.added;
                    blocks.push(block);
                }
                None => break,
            }
        }
        (mask, blocks)
    }

    /// The official `_mask`: up to ten draws of (area, aspect); a rectangle that fits strictly
    /// inside the grid and adds between 1 and `max_mask_patches` new patches is masked.
    fn place_block(
        &self,
        mask: &mut [bool],
        grid: (usize, usize),
        max_mask_patches: usize,
        rng: &mut impl Rng,
    ) -> Option<MaskBlock> {
        let (gh, gw) = grid;
        let (lo, hi) = self.aspect_range();
        for _ in 0..BLOCK_ATTEMPTS {
            let target_area = py_uniform(rng, self.min_num_patches as f64, max_mask_patches as f64);
            let aspect = py_uniform(rng, lo.ln(), hi.ln()).exp();
            // Python 3's round() rounds halves to even.
            let h = (target_area * aspect).sqrt().round_ties_even() as usize;
            let w = (target_area / aspect).sqrt().round_ties_even() as usize;
            if w >= gw || h >= gh {
                continue;
            }
            let top = rng.gen_range(0..=gh - h);
            let left = rng.gen_range(0..=gw - w);
            let cells = || (top..top + h).flat_map(move |i| (left..left + w).map(move |j| i * gw + j));
            let new = cells().filter(|&k| !mask[k]).count();
            if new > 0 && new <= max_mask_patches {
                cells().for_each(|k| mask[k] = true);
                return Some(MaskBlock { top, left, height: h, width: w, target_area, aspect, added: new });
            }
        }
        None
    }
}

/// Python's `random.uniform(a, b) = a + (b - a) * U`, also when `b < a` (the official generator
/// draws the last, small block's area from `[remaining, min_num_patches]` this way).
fn py_uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.r#gen::<f64>()
}

/// SimMIM's mask generator (microsoft/SimMIM `MaskGenerator`): the image is cut into coarse
/// squares of `mask_patch_size` pixels, `ceil(ratio * squares)` of them chosen uniformly are
/// masked, and each square covers `(mask_patch_size / model_patch_size)^2` model patches.
/// SimMIM at 192 px with Swin (patch 4): squares of 32, ratio 0.6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMimMasking {
    /// Side of a masked square in pixels.
    pub mask_patch_size: usize,
    /// The model's patch side in pixels; must divide `mask_patch_size`.
    pub model_patch_size: usize,
    /// Fraction of squares masked (rounded up to whole squares).
    pub mask_ratio: f64,
}

impl SimMimMasking {
    /// Model patches per side of a masked square.
    pub fn scale(&self) -> usize {
        self.mask_patch_size / self.model_patch_size.max(1)
    }

    /// Checks the settings fit a `grid` of model patches.
    pub fn validate(&self, grid: (usize, usize)) -> Result<()> {
        check_ratio(self.mask_ratio)?;
        ensure!(
            self.model_patch_size > 0 && self.mask_patch_size.is_multiple_of(self.model_patch_size),
            "SimMIM mask patch size {} is not a multiple of the model patch size {}: use e.g. mask_patch_size {}",
            self.mask_patch_size,
            self.model_patch_size,
            self.model_patch_size.max(1) * 8
        );
        let s = self.scale();
        ensure!(
            s > 0 && grid.0.is_multiple_of(s) && grid.1.is_multiple_of(s),
            "a {}x{} patch grid does not split into {s}x{s} mask squares: the image side must be a multiple of mask_patch_size {}",
            grid.0,
            grid.1,
            self.mask_patch_size
        );
        Ok(())
    }

    /// Masked squares per image, `ceil(squares * ratio)` as the official code.
    pub fn mask_count(&self, grid: (usize, usize)) -> usize {
        let s = self.scale();
        ((grid.0 / s * (grid.1 / s)) as f64 * self.mask_ratio).ceil() as usize
    }

    /// One image's mask over `grid` model patches (row-major, `true` = masked).
    pub fn sample(&self, grid: (usize, usize), rng: &mut impl Rng) -> Vec<bool> {
        let s = self.scale();
        let (rh, rw) = (grid.0 / s, grid.1 / s);
        let mut coarse = vec![false; rh * rw];
        for i in rand::seq::index::sample(rng, rh * rw, self.mask_count(grid)) {
            coarse[i] = true;
        }
        (0..grid.0 * grid.1).map(|k| coarse[(k / grid.1 / s) * rw + (k % grid.1) / s]).collect()
    }
}

/// MAE's grid-wise sampling ablation: keep the top-left patch of every 2x2 square, mask the rest
/// (75% of an even grid).
pub fn grid_mask(grid: (usize, usize)) -> Vec<bool> {
    (0..grid.0 * grid.1).map(|k| (k / grid.1) % 2 == 1 || (k % grid.1) % 2 == 1).collect()
}

/// How patches are chosen for masking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MaskStrategy {
    /// MAE's uniform random masking: all but `int(L * (1 - ratio))` patches of each image masked.
    Random {
        /// Fraction of patches masked.
        ratio: f64,
    },
    /// BEiT's block-wise masking.
    Block(BlockMasking),
    /// MAE's grid ablation, [`grid_mask`].
    Grid,
    /// SimMIM's coarse random masking.
    SimMim(SimMimMasking),
}

impl MaskStrategy {
    /// Checks the strategy fits a `grid` of patches.
    pub fn validate(&self, grid: (usize, usize)) -> Result<()> {
        match self {
            MaskStrategy::Random { ratio } => check_ratio(*ratio),
            MaskStrategy::Block(b) => b.validate(grid),
            MaskStrategy::Grid => {
                ensure!(grid.0 > 1 || grid.1 > 1, "grid masking needs at least 2 patches");
                Ok(())
            }
            MaskStrategy::SimMim(s) => s.validate(grid),
        }
    }

    /// Masks for `batch` images over `grid`, drawn from `rng`.
    pub fn sample(&self, grid: (usize, usize), batch: usize, rng: &mut impl Rng) -> Result<BoolMask> {
        self.validate(grid)?;
        let l = grid.0 * grid.1;
        let masked = match self {
            MaskStrategy::Random { ratio } => {
                Mask::from_noise(&uniform_noise(rng, batch, l), batch, *ratio)?.mask.iter().map(|&m| m > 0.5).collect()
            }
            MaskStrategy::Block(b) => (0..batch).flat_map(|_| b.sample_blocks(grid, rng).0).collect(),
            MaskStrategy::Grid => grid_mask(grid).repeat(batch),
            MaskStrategy::SimMim(s) => (0..batch).flat_map(|_| s.sample(grid, rng)).collect(),
        };
        BoolMask::new(masked, batch, grid)
    }
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
    fn loss_targets_are_the_removed_patches_or_all_without_removal() {
        let m = Mask::from_noise(&[0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4, 0.7], 2, 0.5).unwrap();
        assert_eq!(m.ids_target(), vec![0, 2, 1, 3]);
        assert_eq!(m.ids_target_tensor(&Device::flex()).dims(), [2, 2]);
        assert_eq!(Mask::keep_all(2, 3).ids_target(), vec![0, 1, 2, 0, 1, 2]);
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

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn beit_block_masking_reaches_its_target_with_blocks_within_the_official_bounds() {
        let (grid, target, n) = ((14, 14), 75, 2000);
        let generator = BlockMasking::beit(target);
        let mut r = rng();
        let (mut total, mut short, mut blocks_seen) = (0usize, 0usize, 0usize);
        for _ in 0..n {
            let (mask, blocks) = generator.sample_blocks(grid, &mut r);
            let count = mask.iter().filter(|&&m| m).count();
            assert!(count <= target, "never more than the target");
            assert_eq!(count, blocks.iter().map(|b| b.added).sum::<usize>());
            total += count;
            short += (count < target) as usize;
            let mut remaining = target;
            for b in &blocks {
                blocks_seen += 1;
                assert!(b.top + b.height <= 14 && b.left + b.width <= 14 && b.height < 14 && b.width < 14);
                assert!((0.3 - 1e-12..=1.0 / 0.3 + 1e-12).contains(&b.aspect), "aspect {}", b.aspect);
                // Sides are the rounded square roots of the drawn area times / over the aspect.
                assert!((b.height as f64 - (b.target_area * b.aspect).sqrt()).abs() <= 0.5);
                assert!((b.width as f64 - (b.target_area / b.aspect).sqrt()).abs() <= 0.5);
                // The area is drawn in [16, remaining] while at least 16 remain, else in [remaining, 16].
                let (lo, hi) = (remaining.min(16) as f64, remaining.max(16) as f64);
                assert!(b.target_area >= lo && b.target_area <= hi, "area {} outside [{lo}, {hi}]", b.target_area);
                assert!(b.added >= 1 && b.added <= remaining);
                remaining -= b.added;
            }
        }
        let mean = total as f64 / n as f64;
        eprintln!(
            "block masking 14x14 target 75: mean {mean:.2} masked ({:.4} of 196), {short}/{n} images short, {:.2} blocks per image",
            mean / 196.0,
            blocks_seen as f64 / n as f64
        );
        assert!(mean > 74.0 && mean <= 75.0, "mean masked {mean}");
    }

    #[test]
    fn grid_masking_keeps_the_top_left_of_every_2x2() {
        let m = grid_mask((4, 4));
        let pattern = "0101111101011111";
        assert_eq!(m.iter().map(|&b| if b { '1' } else { '0' }).collect::<String>(), pattern);
        assert_eq!(grid_mask((14, 14)).iter().filter(|&&b| b).count(), 147);
        let bm = MaskStrategy::Grid.sample((14, 14), 3, &mut rng()).unwrap();
        let mae = bm.to_mae_mask(49, &mut rng()).unwrap();
        assert_eq!(mae.mask.iter().map(|&v| v > 0.5).collect::<Vec<_>>(), bm.masked, "an exact count is kept as is");
    }

    #[test]
    fn simmim_masks_whole_squares_at_the_exact_ratio() {
        // 224 px, squares of 32, Swin patch 4: 7x7 squares of 8x8 patches on a 56x56 grid.
        let s = SimMimMasking { mask_patch_size: 32, model_patch_size: 4, mask_ratio: 0.6 };
        assert_eq!(s.mask_count((56, 56)), 30); // ceil(49 * 0.6)
        let bm = MaskStrategy::SimMim(s).sample((56, 56), 4, &mut rng()).unwrap();
        for b in 0..4 {
            let row = bm.row(b);
            assert_eq!(row.iter().filter(|&&m| m).count(), 30 * 64);
            for k in 0..56 * 56 {
                let corner = (k / 56 / 8 * 8) * 56 + (k % 56) / 8 * 8;
                assert_eq!(row[k], row[corner], "square of patch {k} is uniform");
            }
        }
    }

    #[test]
    fn boolean_masks_become_mae_masks_with_the_exact_visible_count() {
        let strategy = MaskStrategy::Block(BlockMasking { min_num_patches: 4, ..BlockMasking::beit(20) });
        let bm = strategy.sample((8, 8), 16, &mut rng()).unwrap();
        for keep in [16, 44, 60] {
            let m = bm.to_mae_mask(keep, &mut rng()).unwrap();
            for b in 0..16 {
                let row = &m.mask[b * 64..(b + 1) * 64];
                assert_eq!(row.iter().filter(|&&v| v == 0.0).count(), keep);
                let visible_before = bm.row(b).iter().filter(|&&x| !x).count();
                // Trimming only masks visible patches; topping up only unmasks masked ones.
                for (i, &v) in row.iter().enumerate() {
                    if keep <= visible_before && bm.row(b)[i] {
                        assert_eq!(v, 1.0);
                    }
                    if keep >= visible_before && !bm.row(b)[i] {
                        assert_eq!(v, 0.0);
                    }
                }
                for (pos, &i) in m.ids_keep[b * keep..(b + 1) * keep].iter().enumerate() {
                    assert_eq!(m.ids_restore[b * 64 + i], pos);
                }
            }
        }
        let random = MaskStrategy::Random { ratio: 0.75 }.sample((7, 7), 2, &mut rng()).unwrap();
        assert_eq!(random.count(), 2 * (49 - 12));
    }

    #[test]
    fn strategies_round_trip_through_json() {
        let sim = SimMimMasking { mask_patch_size: 32, model_patch_size: 4, mask_ratio: 0.6 };
        for s in [
            MaskStrategy::Random { ratio: 0.75 },
            MaskStrategy::Block(BlockMasking::beit(75)),
            MaskStrategy::Grid,
            MaskStrategy::SimMim(sim),
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<MaskStrategy>(&json).unwrap(), s, "{json}");
        }
        let json = r#"{"kind": "block", "num_masking_patches": 75, "min_num_patches": 16, "max_num_patches": null, "min_aspect": 0.3, "max_aspect": null}"#;
        assert_eq!(serde_json::from_str::<MaskStrategy>(json).unwrap(), MaskStrategy::Block(BlockMasking::beit(75)));
    }

    #[test]
    fn bad_strategies_are_rejected_with_a_hint() {
        let e = |s: MaskStrategy, g| s.sample(g, 1, &mut rng()).unwrap_err().to_string();
        assert!(e(MaskStrategy::Block(BlockMasking::beit(300)), (14, 14)).contains("choose between 1 and 195"));
        let sim = SimMimMasking { mask_patch_size: 30, model_patch_size: 4, mask_ratio: 0.6 };
        assert!(e(MaskStrategy::SimMim(sim), (56, 56)).contains("not a multiple"));
        let sim = SimMimMasking { mask_patch_size: 32, model_patch_size: 4, mask_ratio: 0.6 };
        assert!(e(MaskStrategy::SimMim(sim), (28, 28)).contains("multiple of mask_patch_size 32"));
        assert!(BoolMask::new(vec![true; 5], 1, (2, 2)).is_err());
    }
}
