//! Image transforms to normalised `[C, S, S]` floats: MAE's pretraining augmentation (random
//! resized crop, scale 0.2-1.0, ratio 3/4-4/3, then horizontal flip) and a plain resize for
//! evaluation and pictures. Resampling is bilinear with half-pixel centres (the official code
//! uses bicubic; on 28-32 px images the difference is below the augmentation's own noise).

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Image;

/// How an image becomes a model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Transform {
    /// Random resized crop to `size` + random horizontal flip (MAE pretraining).
    RandomResizedCrop {
        /// Output side.
        size: usize,
        /// Range of the crop's area as a fraction of the image.
        scale: (f64, f64),
        /// Range of the crop's aspect ratio.
        ratio: (f64, f64),
        /// Flip left-right with probability 0.5.
        hflip: bool,
    },
    /// Resize the whole image to `size x size`.
    Resize {
        /// Output side.
        size: usize,
    },
}

impl Transform {
    /// MAE's pretraining augmentation at `size` pixels.
    pub fn mae_pretrain(size: usize) -> Self {
        Transform::RandomResizedCrop { size, scale: (0.2, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), hflip: true }
    }

    /// Output side in pixels.
    pub fn size(&self) -> usize {
        match self {
            Transform::RandomResizedCrop { size, .. } | Transform::Resize { size } => *size,
        }
    }

    /// Writes the transformed, normalised image into `out: [C * size * size]`.
    pub fn apply(&self, img: &Image, mean: &[f32], std: &[f32], rng: &mut impl Rng, out: &mut [f32]) {
        let (w, h) = (img.width as f64, img.height as f64);
        let (crop, flip) = match self {
            Transform::RandomResizedCrop { scale, ratio, hflip, .. } => {
                (crop_params(w, h, *scale, *ratio, rng), *hflip && rng.gen_bool(0.5))
            }
            Transform::Resize { .. } => ((0.0, 0.0, w, h), false),
        };
        resize_bilinear(img, crop, self.size(), flip, mean, std, out);
    }
}

/// torchvision's `RandomResizedCrop.get_params`: `(x0, y0, width, height)` of the crop.
fn crop_params(w: f64, h: f64, scale: (f64, f64), ratio: (f64, f64), rng: &mut impl Rng) -> (f64, f64, f64, f64) {
    let area = w * h;
    let (lo, hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale.0..=scale.1);
        let aspect = rng.gen_range(lo..=hi).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && cw <= w && ch > 0.0 && ch <= h {
            let y0 = rng.gen_range(0..=(h - ch) as usize) as f64;
            let x0 = rng.gen_range(0..=(w - cw) as usize) as f64;
            return (x0, y0, cw, ch);
        }
    }
    // Fallback: the largest centred crop within the ratio range.
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, (w / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h * ratio.1).round(), h)
    } else {
        (w, h)
    };
    (((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch)
}

/// Bilinear resample of the crop `(x0, y0, cw, ch)` to `size x size`, normalised, planar output.
fn resize_bilinear(img: &Image, crop: (f64, f64, f64, f64), size: usize, flip: bool, mean: &[f32], std: &[f32], out: &mut [f32]) {
    let (x0, y0, cw, ch) = crop;
    let c = img.channels;
    let px = |x: usize, y: usize, k: usize| img.pixels[(y * img.width + x) * c + k] as f32;
    let sample = |src: f64, start: f64, len: f64, limit: usize| {
        // half-pixel centres, clamped to the crop and the image
        let s = (start + (src + 0.5) * len / size as f64 - 0.5).clamp(start, start + len - 1.0).clamp(0.0, (limit - 1) as f64);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(limit - 1);
        (i0, i1, (s - i0 as f64) as f32)
    };
    for oy in 0..size {
        let (ya, yb, fy) = sample(oy as f64, y0, ch, img.height);
        for ox in 0..size {
            let sx = if flip { size - 1 - ox } else { ox };
            let (xa, xb, fx) = sample(sx as f64, x0, cw, img.width);
            for k in 0..c {
                let top = px(xa, ya, k) * (1.0 - fx) + px(xb, ya, k) * fx;
                let bottom = px(xa, yb, k) * (1.0 - fx) + px(xb, yb, k) * fx;
                let v = (top * (1.0 - fy) + bottom * fy) / 255.0;
                out[(k * size + oy) * size + ox] = (v - mean[k]) / std[k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ramp() -> Image {
        Image { width: 4, height: 4, channels: 1, pixels: (0..16).map(|v| v as u8 * 10).collect() }
    }

    #[test]
    fn resize_to_same_size_is_identity_up_to_normalisation() {
        let mut out = vec![0.0; 16];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        Transform::Resize { size: 4 }.apply(&ramp(), &[0.0], &[1.0], &mut rng, &mut out);
        for (i, v) in out.iter().enumerate() {
            assert!((v - i as f32 * 10.0 / 255.0).abs() < 1e-6);
        }
    }

    #[test]
    fn random_resized_crop_stays_in_range_and_is_seeded() {
        let t = Transform::mae_pretrain(4);
        let run = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut out = vec![0.0; 16];
            t.apply(&ramp(), &[0.0], &[1.0], &mut rng, &mut out);
            out
        };
        assert_eq!(run(3), run(3));
        assert!(run(3).iter().all(|v| (0.0..=150.0 / 255.0 + 1e-6).contains(v)));
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (x0, y0, w, h) = crop_params(28.0, 28.0, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(x0 >= 0.0 && y0 >= 0.0 && x0 + w <= 28.0 && y0 + h <= 28.0);
            assert!(w * h >= 0.2 * 784.0 * 0.9, "crop area {} too small", w * h);
        }
    }
}
