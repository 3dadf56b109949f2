//! Resampling of planar `[C, H, W]` arrays as PyTorch's
//! `torch.nn.functional.interpolate(x, size, mode, align_corners=False, antialias)`, which
//! torchvision's tensor `Resize` and `RandomResizedCrop` call.
//!
//! Both axes are resampled separably, width first (as torch's separable kernels): each output
//! position reads a few source positions with fixed weights (`Taps`). Without antialias the
//! taps are torch's: half-pixel centres, bilinear clamped to the edge, bicubic with
//! `A = -0.75` over indices clamped to the edge. With antialias they are torch's `_aa` kernels
//! (Pillow's): the filter (triangle, or cubic with `a = -0.5`) is stretched by the downscaling
//! factor, truncated at the borders and renormalised; on an axis that is upscaled the support is
//! the plain filter's, so bilinear equals the non-antialiased result there but bicubic does not
//! (other `a`, other border).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Interpolation kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    /// Linear in each axis (`mode='bilinear'`).
    Bilinear,
    /// Cubic convolution in each axis (`mode='bicubic'`; torchvision's `interpolation=3`).
    Bicubic,
}

/// Keys' cubic convolution kernel for `|x| < 1`.
fn cubic1(x: f64, a: f64) -> f64 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// Keys' cubic convolution kernel for `1 <= |x| < 2`.
fn cubic2(x: f64, a: f64) -> f64 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// The weights one axis of a resampling applies: output position `o` is
/// `sum_k weight[o * width + k] * source[index[o * width + k]]`.
pub(crate) struct Taps {
    width: usize,
    index: Vec<usize>,
    weight: Vec<f32>,
}

impl Taps {
    /// Outputs `outputs` of resampling the source positions `start..start + len` of an axis to
    /// `out` positions; indices are absolute (from the axis's 0), so a crop needs no copy.
    pub(crate) fn new(
        start: usize,
        len: usize,
        out: usize,
        outputs: Range<usize>,
        resample: Resample,
        antialias: bool,
    ) -> Taps {
        assert!(len > 0 && out > 0 && outputs.end <= out, "resampling {len} positions to {out}");
        let last = start + len - 1;
        let (start_f, len_f, out_f) = (start as f64, len as f64, out as f64);
        let per_output: Vec<Vec<(usize, f64)>> = outputs
            .map(|o| {
                let o = o as f64;
                if antialias {
                    // torch's _compute_weights_aa, in the window's own coordinates.
                    let scale = len_f / out_f;
                    let (size, a) = match resample {
                        Resample::Bilinear => (2.0, 0.0),
                        Resample::Bicubic => (4.0, -0.5),
                    };
                    let filter = |x: f64| {
                        let x = x.abs();
                        match resample {
                            Resample::Bilinear => (1.0 - x).max(0.0),
                            Resample::Bicubic if x < 1.0 => cubic1(x, a),
                            Resample::Bicubic if x < 2.0 => cubic2(x, a),
                            Resample::Bicubic => 0.0,
                        }
                    };
                    let (support, invscale) =
                        if scale >= 1.0 { (size / 2.0 * scale, 1.0 / scale) } else { (size / 2.0, 1.0) };
                    let center = scale * (o + 0.5);
                    // `as i64` truncates toward zero, as the C++ casts.
                    let lo = ((center - support + 0.5) as i64).max(0) as usize;
                    let hi = ((center + support + 0.5) as i64).min(len as i64) as usize;
                    let w: Vec<(usize, f64)> =
                        (lo..hi).map(|j| (start + j, filter((j as f64 - center + 0.5) * invscale))).collect();
                    let total: f64 = w.iter().map(|t| t.1).sum();
                    w.into_iter().map(|(i, v)| (i, if total != 0.0 { v / total } else { v })).collect()
                } else {
                    // The expression mim's bilinear resampling has always used (absolute coordinates),
                    // so its results stay bit-identical.
                    let s = start_f + (o + 0.5) * len_f / out_f - 0.5;
                    match resample {
                        Resample::Bilinear => {
                            let s = s.clamp(start_f, last as f64);
                            let i0 = s.floor() as usize;
                            let f = (s - i0 as f64) as f32;
                            vec![(i0, f64::from(1.0 - f)), ((i0 + 1).min(last), f64::from(f))]
                        }
                        Resample::Bicubic => {
                            let (i, t, a) = (s.floor(), s - s.floor(), -0.75);
                            let w = [cubic2(t + 1.0, a), cubic1(t, a), cubic1(1.0 - t, a), cubic2(2.0 - t, a)];
                            let at = |k: f64| (i + k).clamp(start_f, last as f64) as usize;
                            (0..4).map(|k| (at(k as f64 - 1.0), w[k])).collect()
                        }
                    }
                }
            })
            .collect();
        let width = per_output.iter().map(Vec::len).max().unwrap_or(0);
        let mut taps = Taps { width, index: Vec::new(), weight: Vec::new() };
        for w in per_output {
            // Short rows are padded with zero weights on their last index.
            let pad = w.last().map_or(start, |t| t.0);
            for k in 0..width {
                let (i, v) = w.get(k).copied().unwrap_or((pad, 0.0));
                taps.index.push(i);
                taps.weight.push(v as f32);
            }
        }
        taps
    }

    /// Number of output positions.
    fn len(&self) -> usize {
        self.index.len() / self.width.max(1)
    }

    /// The source positions read.
    fn span(&self) -> Range<usize> {
        let lo = self.index.iter().copied().min().unwrap_or(0);
        lo..self.index.iter().copied().max().map_or(lo, |hi| hi + 1)
    }

    /// `sum_k w_k * at(index_k)` for output `o`, accumulated from 0 in tap order.
    fn sum(&self, o: usize, at: impl Fn(usize) -> f32) -> f32 {
        let r = o * self.width..(o + 1) * self.width;
        self.index[r.clone()].iter().zip(&self.weight[r]).fold(0.0, |acc, (&i, &w)| acc + w * at(i))
    }
}

/// Resamples the `channels` planes that `src(c, y, x)` reads into `out: [C, rows, cols]` (the
/// output counts of `rows` and `cols`): columns first, then rows.
pub(crate) fn resample_planes(
    channels: usize,
    src: impl Fn(usize, usize, usize) -> f32,
    rows: &Taps,
    cols: &Taps,
    out: &mut [f32],
) {
    let (h, w, span) = (rows.len(), cols.len(), rows.span());
    let mut tmp = vec![0.0f32; span.len() * w];
    for c in 0..channels {
        for (y, line) in span.clone().zip(tmp.chunks_mut(w)) {
            line.iter_mut().enumerate().for_each(|(x, v)| *v = cols.sum(x, |i| src(c, y, i)));
        }
        let plane = &mut out[c * h * w..(c + 1) * h * w];
        for (y, line) in plane.chunks_mut(w).enumerate() {
            for (x, v) in line.iter_mut().enumerate() {
                *v = rows.sum(y, |i| tmp[(i - span.start) * w + x]);
            }
        }
    }
}

/// `x: [C, H, W]` (row-major, `from = (H, W)`) resized to `[C, to.0, to.1]`, as
/// `torch.nn.functional.interpolate(x[None], to, mode=resample, align_corners=False, antialias=antialias)[0]`.
///
/// # Panics
/// If `x` does not hold `C * H * W` values or a size is 0.
pub fn resize(
    x: &[f32],
    channels: usize,
    from: (usize, usize),
    to: (usize, usize),
    resample: Resample,
    antialias: bool,
) -> Vec<f32> {
    let (h, w) = from;
    assert_eq!(x.len(), channels * h * w, "resize: {} values are not [{channels}, {h}, {w}]", x.len());
    let rows = Taps::new(0, h, to.0, 0..to.0, resample, antialias);
    let cols = Taps::new(0, w, to.1, 0..to.1, resample, antialias);
    let mut out = vec![0.0; channels * to.0 * to.1];
    resample_planes(channels, |c, y, i| x[(c * h + y) * w + i], &rows, &cols, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity_for_every_kernel() {
        let x: Vec<f32> = (0..2 * 5 * 7).map(|v| (v as f32 * 0.37).sin()).collect();
        for resample in [Resample::Bilinear, Resample::Bicubic] {
            for antialias in [false, true] {
                assert_eq!(resize(&x, 2, (5, 7), (5, 7), resample, antialias), x, "{resample:?} aa {antialias}");
            }
        }
    }

    #[test]
    fn weights_sum_to_one_and_constants_stay_constant() {
        let x = vec![0.25f32; 3 * 9 * 4];
        for resample in [Resample::Bilinear, Resample::Bicubic] {
            for antialias in [false, true] {
                for to in [(2, 11), (20, 3), (9, 4)] {
                    let y = resize(&x, 3, (9, 4), to, resample, antialias);
                    assert!(y.iter().all(|v| (v - 0.25).abs() < 1e-6), "{resample:?} aa {antialias} {to:?}");
                }
            }
        }
    }
}
