//! Image transforms to normalised `[C, S, S]` floats: MAE's pretraining augmentation (random
//! resized crop, scale 0.2-1.0, ratio 3/4-4/3, then horizontal flip), BEiT's (the same plus
//! torchvision's colour jitter) and a plain resize for evaluation and pictures. Resampling is bilinear with half-pixel
//! centres (the official code uses bicubic; on 28-32 px images the difference is below the augmentation's own noise).

use rand::Rng;
use rand::seq::SliceRandom;
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
        /// Colour jitter strength `s` (0 = off): brightness, contrast and saturation factors drawn
        /// from `[1 - s, 1 + s]` and applied in random order, as torchvision's
        /// `ColorJitter(s, s, s)` (BEiT's `--color_jitter 0.4`; saturation does nothing to grey images).
        #[serde(default)]
        color_jitter: f32,
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
        Transform::RandomResizedCrop {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            color_jitter: 0.0,
        }
    }

    /// BEiT's pretraining augmentation at `size` pixels: MAE's plus colour jitter 0.4.
    pub fn beit_pretrain(size: usize) -> Self {
        Transform::RandomResizedCrop {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            color_jitter: 0.4,
        }
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
        let (crop, flip, jitter) = match self {
            Transform::RandomResizedCrop { scale, ratio, hflip, color_jitter, .. } => {
                (crop_params(w, h, *scale, *ratio, rng), *hflip && rng.gen_bool(0.5), *color_jitter)
            }
            Transform::Resize { .. } => ((0.0, 0.0, w, h), false, 0.0),
        };
        let size = self.size();
        resize_bilinear(img, crop, size, flip, out);
        if jitter > 0.0 {
            color_jitter(&mut out[..img.channels * size * size], img.channels, jitter, rng);
        }
        for (k, plane) in out.chunks_mut(size * size).take(img.channels).enumerate() {
            plane.iter_mut().for_each(|v| *v = (*v - mean[k]) / std[k]);
        }
    }
}

/// torchvision's `ColorJitter(s, s, s, 0)` on a planar `[C, H*W]` image in [0, 1]: the three
/// adjustments in a random order, each a blend clamped to [0, 1] (brightness with black, contrast
/// with the mean grey level, saturation with the pixel's own grey).
fn color_jitter(img: &mut [f32], channels: usize, s: f32, rng: &mut impl Rng) {
    let mut order = [0usize, 1, 2];
    order.shuffle(rng);
    let factors: Vec<f32> = (0..3).map(|_| rng.gen_range((1.0 - s).max(0.0)..=1.0 + s)).collect();
    let n = img.len() / channels;
    // ITU-R 601-2 luma, as torchvision's rgb_to_grayscale; a grey image is its own grey.
    let grey = |img: &[f32], i: usize| {
        if channels == 3 { 0.299 * img[i] + 0.587 * img[n + i] + 0.114 * img[2 * n + i] } else { img[i] }
    };
    let blend = |v: &mut f32, f: f32, other: f32| *v = (f * *v + (1.0 - f) * other).clamp(0.0, 1.0);
    for op in order {
        let f = factors[op];
        match op {
            0 => img.iter_mut().for_each(|v| blend(v, f, 0.0)),
            1 => {
                let mean = (0..n).map(|i| grey(img, i)).sum::<f32>() / n as f32;
                img.iter_mut().for_each(|v| blend(v, f, mean));
            }
            _ if channels == 3 => {
                let g: Vec<f32> = (0..n).map(|i| grey(img, i)).collect();
                img.iter_mut().enumerate().for_each(|(j, v)| blend(v, f, g[j % n]));
            }
            _ => {}
        }
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

/// Bilinear resample of the crop `(x0, y0, cw, ch)` to `size x size`, planar output in [0, 1].
fn resize_bilinear(img: &Image, crop: (f64, f64, f64, f64), size: usize, flip: bool, out: &mut [f32]) {
    let (x0, y0, cw, ch) = crop;
    let c = img.channels;
    let px = |x: usize, y: usize, k: usize| img.pixels[(y * img.width + x) * c + k] as f32;
    let sample = |src: f64, start: f64, len: f64, limit: usize| {
        // half-pixel centres, clamped to the crop and the image
        let s = (start + (src + 0.5) * len / size as f64 - 0.5)
            .clamp(start, start + len - 1.0)
            .clamp(0.0, (limit - 1) as f64);
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
                out[(k * size + oy) * size + ox] = (top * (1.0 - fy) + bottom * fy) / 255.0;
            }
        }
    }
}

/// Pretraining augmentation (MAE Table 1e).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// The whole image, resized.
    None,
    /// A fixed-size crop (64% of the area, square) at a random place, plus flip.
    FixedCrop,
    /// Random resized crop, scale 0.2-1.0, plus flip (MAE's and SimMIM's default).
    #[default]
    RandomResizedCrop,
    /// Random resized crop, flip and colour jitter 0.4 (BEiT's default).
    RandomResizedCropColorJitter,
}

impl Augmentation {
    /// The transform to `side` pixels.
    pub fn transform(self, side: usize) -> Transform {
        match self {
            Augmentation::None => Transform::Resize { size: side },
            Augmentation::FixedCrop => Transform::RandomResizedCrop {
                size: side,
                scale: (0.64, 0.64),
                ratio: (1.0, 1.0),
                hflip: true,
                color_jitter: 0.0,
            },
            Augmentation::RandomResizedCropColorJitter => Transform::beit_pretrain(side),
            Augmentation::RandomResizedCrop => Transform::mae_pretrain(side),
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

    #[test]
    fn color_jitter_matches_torchvision_blends() {
        // One factor per operation, checked against torchvision's formulas written out.
        let rgb = vec![0.2, 0.9, 0.5, 0.1, 0.4, 0.6, 0.3, 0.8, 0.7, 0.05, 1.0, 0.0];
        let (n, s) = (4, 0.4);
        for seed in 0..20 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut got = rgb.clone();
            color_jitter(&mut got, 3, s, &mut rng);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut order = [0usize, 1, 2];
            order.shuffle(&mut rng);
            let f: Vec<f32> = (0..3).map(|_| rng.gen_range(0.6f32..=1.4)).collect();
            assert!(f.iter().all(|f| (0.6..=1.4).contains(f)));
            let mut want = rgb.clone();
            for op in order {
                let grey: Vec<f32> =
                    (0..n).map(|i| 0.299 * want[i] + 0.587 * want[n + i] + 0.114 * want[2 * n + i]).collect();
                let mean = grey.iter().sum::<f32>() / n as f32;
                for (j, v) in want.iter_mut().enumerate() {
                    let other = [0.0, mean, grey[j % n]][op];
                    *v = (f[op] * *v + (1.0 - f[op]) * other).clamp(0.0, 1.0);
                }
            }
            assert_eq!(got, want);
        }
        // Grey images: brightness and contrast only, values stay in [0, 1] and change.
        let t = Transform::beit_pretrain(4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (mut a, mut b) = (vec![0.0; 16], vec![0.0; 16]);
        t.apply(&ramp(), &[0.0], &[1.0], &mut rng, &mut a);
        let plain = Transform::RandomResizedCrop {
            size: 4,
            scale: (0.2, 1.0),
            ratio: (0.75, 4.0 / 3.0),
            hflip: true,
            color_jitter: 0.0,
        };
        plain.apply(&ramp(), &[0.0], &[1.0], &mut rand_chacha::ChaCha8Rng::seed_from_u64(1), &mut b);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(a, b);
    }
}
