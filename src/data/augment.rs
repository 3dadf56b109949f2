//! Image transforms to normalised `[C, S, S]` floats: MAE's pretraining augmentation (random
//! resized crop, scale 0.2-1.0, ratio 3/4-4/3, then horizontal flip), BEiT's (the same plus
//! torchvision's colour jitter) and the official evaluation transform (shorter side resized, centre
//! crop) for evaluation and pictures.
//!
//! The random resized crop resamples bilinearly without antialias unless wrapped in
//! [`Transform::Resampled`]: that is what mim has always done, kept as the default so runs
//! reproduce (the official code uses bicubic, antialiased by Pillow; on 28-32 px images the
//! difference is below the augmentation's own noise). Resampling is [`super::resize`]'s, which
//! matches torch's `interpolate`.

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::Image;
use super::resize::{Resample, Taps, resample_planes};

/// How an image becomes a model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Transform {
    /// Random resized crop to `size` + random horizontal flip (MAE pretraining), resampled
    /// bilinearly without antialias.
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
    /// The official evaluation transform (MAE's `util/datasets.py`): [`Transform::CenterCrop`]
    /// with the crop fraction [`eval_crop_pct`] of `size`.
    Resize {
        /// Output side.
        size: usize,
    },
    /// torchvision's `Resize(int(size / crop_pct), BICUBIC, antialias=True)` then
    /// `CenterCrop(size)` on a float tensor (no rounding to `u8` in between and no clamping, unlike
    /// the official code's Pillow images: the two differ by up to about 1/255). An image of
    /// `size x size` pixels passes through unchanged (the datasets at the model's size).
    CenterCrop {
        /// Output side.
        size: usize,
        /// The crop's share of the resized shorter side, in (0, 1].
        crop_pct: f64,
    },
    /// `transform` with its resampling set to `resample`, antialiased: torchvision's
    /// `interpolation=` with `antialias=True`, as its `RandomResizedCrop` and `Resize` do (MAE and
    /// BEiT pretrain with bicubic, SimMIM with bilinear).
    Resampled {
        /// Interpolation kernel.
        resample: Resample,
        /// The transform resampled.
        transform: Box<Transform>,
    },
}

/// The evaluation crop fraction of MAE's `build_transform` for a `size` pixel input: 224/256 up to
/// 224 px, the whole shorter side above.
pub fn eval_crop_pct(size: usize) -> f64 {
    if size <= 224 { 224.0 / 256.0 } else { 1.0 }
}

/// What a transform does to an image's geometry.
struct Geometry {
    /// The part of the image used, `(x0, y0, width, height)`.
    window: (usize, usize, usize, usize),
    /// The window's size once resampled, `(width, height)`; the output is its `size x size` part at `offset`.
    resized: (usize, usize),
    /// `(x, y)` of the output in the resampled window.
    offset: (usize, usize),
    /// Kernel, and whether antialiased.
    resample: (Resample, bool),
    /// Flip left-right.
    flip: bool,
    /// Colour jitter strength.
    jitter: f32,
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

    /// `self` with its resampling set to `resample` (antialiased); `None` keeps it.
    pub fn resampled(self, resample: Option<Resample>) -> Self {
        match resample {
            Some(resample) => Transform::Resampled { resample, transform: Box::new(self) },
            None => self,
        }
    }

    /// Output side in pixels.
    pub fn size(&self) -> usize {
        match self {
            Transform::RandomResizedCrop { size, .. }
            | Transform::Resize { size }
            | Transform::CenterCrop { size, .. } => *size,
            Transform::Resampled { transform, .. } => transform.size(),
        }
    }

    /// The geometry for `img`, drawing the random choices from `rng`.
    fn geometry(&self, img: &Image, rng: &mut impl Rng) -> Geometry {
        let (w, h) = (img.width, img.height);
        let size = self.size();
        match self {
            Transform::RandomResizedCrop { scale, ratio, hflip, color_jitter, .. } => {
                let (x0, y0, cw, ch) = crop_params(w as f64, h as f64, *scale, *ratio, rng);
                Geometry {
                    window: (x0 as usize, y0 as usize, cw as usize, ch as usize),
                    resized: (size, size),
                    offset: (0, 0),
                    resample: (Resample::Bilinear, false),
                    flip: *hflip && rng.gen_bool(0.5),
                    jitter: *color_jitter,
                }
            }
            Transform::Resize { .. } => {
                Transform::CenterCrop { size, crop_pct: eval_crop_pct(size) }.geometry(img, rng)
            }
            Transform::CenterCrop { crop_pct, .. } => {
                assert!(*crop_pct > 0.0 && *crop_pct <= 1.0, "crop_pct {crop_pct} is not in (0, 1]");
                let (resized, resample) = if (w, h) == (size, size) {
                    ((w, h), (Resample::Bilinear, false))
                } else {
                    // torchvision's _compute_resized_output_size for an int size: the shorter side.
                    let short = (size as f64 / crop_pct) as usize;
                    let long = (short * w.max(h)) as f64 / w.min(h) as f64;
                    (if w <= h { (short, long as usize) } else { (long as usize, short) }, (Resample::Bicubic, true))
                };
                // torchvision's CenterCrop: Python's round, half to even.
                let centre = |r: usize| ((r - size) as f64 / 2.0).round_ties_even() as usize;
                Geometry {
                    window: (0, 0, w, h),
                    resized,
                    offset: (centre(resized.0), centre(resized.1)),
                    resample,
                    flip: false,
                    jitter: 0.0,
                }
            }
            Transform::Resampled { resample, transform } => {
                Geometry { resample: (*resample, true), ..transform.geometry(img, rng) }
            }
        }
    }

    /// Writes the transformed, normalised image into `out: [C * size * size]`.
    pub fn apply(&self, img: &Image, mean: &[f32], std: &[f32], rng: &mut impl Rng, out: &mut [f32]) {
        let g = self.geometry(img, rng);
        let (size, c) = (self.size(), img.channels);
        let (x0, y0, cw, ch) = g.window;
        let (kernel, antialias) = g.resample;
        let cols = Taps::new(x0, cw, g.resized.0, g.offset.0..g.offset.0 + size, kernel, antialias);
        let rows = Taps::new(y0, ch, g.resized.1, g.offset.1..g.offset.1 + size, kernel, antialias);
        let out = &mut out[..c * size * size];
        resample_planes(c, |k, y, x| img.pixels[(y * img.width + x) * c + k] as f32, &rows, &cols, out);
        if g.flip {
            out.chunks_mut(size).for_each(<[f32]>::reverse);
        }
        out.iter_mut().for_each(|v| *v /= 255.0);
        if g.jitter > 0.0 {
            color_jitter(out, c, g.jitter, rng);
        }
        for (k, plane) in out.chunks_mut(size * size).enumerate() {
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

/// Pretraining augmentation (MAE Table 1e).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// None: the evaluation transform ([`Transform::Resize`]; an image at the model's size as it is).
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

    /// FNV-1a over the outputs' bits: pins today's default resampling exactly.
    fn golden(t: &Transform, img: &Image, seeds: std::ops::Range<u64>) -> u64 {
        let n = img.channels * t.size() * t.size();
        let mut h = 0xcbf29ce484222325u64;
        for seed in seeds {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut out = vec![0.0; n];
            t.apply(img, &vec![0.5; img.channels], &vec![0.25; img.channels], &mut rng, &mut out);
            for v in out {
                h = (h ^ v.to_bits() as u64).wrapping_mul(0x100000001b3);
            }
        }
        h
    }

    fn noise(width: usize, height: usize, channels: usize) -> Image {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        Image { width, height, channels, pixels: (0..width * height * channels).map(|_| rng.r#gen::<u8>()).collect() }
    }

    #[test]
    fn default_resampling_is_bit_identical_to_mims_bilinear() {
        // Hashes of the outputs of mim's per-pixel bilinear code before the separable resampling
        // replaced it: the default crops, and an image at the model's size, are unchanged.
        let grey = noise(28, 28, 1);
        let rgb = noise(37, 23, 3);
        for (t, img, want) in [
            (Transform::mae_pretrain(28), &grey, 0x654b7aca16387a7f),
            (Transform::mae_pretrain(16), &rgb, 0x622a1c4b31f8872b),
            (Transform::beit_pretrain(32), &rgb, 0x935f0197dd5141a8),
            (Augmentation::FixedCrop.transform(28), &grey, 0xe571aeb4e6ffa85),
            (Transform::Resize { size: 28 }, &grey, 0xd3fec8b6360d7ba5),
        ] {
            assert_eq!(golden(&t, img, 0..50), want, "{t:?}");
        }
    }

    #[test]
    fn a_crop_is_resampled_as_the_cropped_array() {
        // The crop's taps address the image in place; they must equal resizing a copy of the crop.
        let img = noise(37, 23, 3);
        let planar = |x0: usize, y0: usize, w: usize, h: usize| -> Vec<f32> {
            (0..3)
                .flat_map(|k| (y0..y0 + h).flat_map(move |y| (x0..x0 + w).map(move |x| (y, x, k))))
                .map(|(y, x, k)| img.pixels[(y * 37 + x) * 3 + k] as f32)
                .collect()
        };
        for (kernel, antialias) in [(Resample::Bilinear, false), (Resample::Bicubic, false), (Resample::Bicubic, true)]
        {
            let (cols, rows) =
                (Taps::new(5, 20, 9, 0..9, kernel, antialias), Taps::new(3, 17, 12, 0..12, kernel, antialias));
            let mut got = vec![0.0; 3 * 12 * 9];
            resample_planes(3, |k, y, x| img.pixels[(y * 37 + x) * 3 + k] as f32, &rows, &cols, &mut got);
            let want = super::super::resize::resize(&planar(5, 3, 20, 17), 3, (17, 20), (12, 9), kernel, antialias);
            assert_eq!(got, want, "{kernel:?} aa {antialias}");
        }
    }

    #[test]
    fn evaluation_transform_resizes_the_shorter_side_and_crops_the_centre() {
        // 40 x 20 to 16: shorter side int(16 / 0.875) = 18, longer int(18 * 40 / 20) = 36, crop
        // at round((36 - 16) / 2) = 10 and round((18 - 16) / 2) = 1.
        let img = noise(40, 20, 1);
        let t = Transform::Resize { size: 16 };
        let mut got = vec![0.0; 256];
        t.apply(&img, &[0.0], &[1.0], &mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &mut got);
        let x: Vec<f32> = img.pixels.iter().map(|&v| v as f32).collect();
        let big = super::super::resize::resize(&x, 1, (20, 40), (18, 36), Resample::Bicubic, true);
        for (i, v) in got.iter().enumerate() {
            let (y, x) = (i / 16, i % 16);
            assert!((v - big[(y + 1) * 36 + x + 10] / 255.0).abs() < 1e-6);
        }
        // Resampled keeps the geometry and changes the kernel; at the model's size nothing changes.
        let mut bilinear = vec![0.0; 256];
        t.clone().resampled(Some(Resample::Bilinear)).apply(
            &img,
            &[0.0],
            &[1.0],
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
            &mut bilinear,
        );
        assert_ne!(bilinear, got);
        let square = noise(16, 16, 1);
        let (mut a, mut b) = (vec![0.0; 256], vec![0.0; 256]);
        t.apply(&square, &[0.0], &[1.0], &mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &mut a);
        t.resampled(Some(Resample::Bicubic)).apply(
            &square,
            &[0.0],
            &[1.0],
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
            &mut b,
        );
        assert_eq!(a, b);
        assert!(a.iter().zip(&square.pixels).all(|(v, &p)| *v == p as f32 / 255.0));
    }
}
