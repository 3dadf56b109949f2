//! Position parameters resized to another image or window size, as the official fine-tuning codes
//! do when a checkpoint was trained at another size than the model's (published weights are for
//! 224 px). Each function takes and returns a tensor as [`crate::io::TensorMap`] holds it,
//! `(shape, values)` in PyTorch layout.
//!
//! - Absolute position embeddings `[1, extra + g*g, D]`: [`interpolate_pos_embed`] (MAE, BEiT with
//!   `use_abs_pos_emb`, and Swin's `absolute_pos_embed` with no extra token).
//! - Relative position bias tables `[(2w-1)^2 + extra, heads]` (BEiT: 3 extra rows; Swin: none):
//!   [`resize_rel_pos_bias_table`], by one of the three published methods ([`RelPosResize`]).
//!
//! The buffers derived from the size are not resized but dropped and rebuilt for the new size by
//! every reference: `relative_position_index` (unilm BEiT, SimMIM, Swin-Transformer, timm), and
//! for Swin `attn_mask` (and Swin V2's `relative_coords_table`). microsoft/Swin-Transformer's
//! `load_pretrained` also resizes `absolute_pos_embed` bicubically (what [`interpolate_pos_embed`]
//! does with no extra token); SimMIM's leaves it alone (its Swin has none by default).

use anyhow::{Result, ensure};

use crate::data::resize::{Resample, resize};

/// A tensor as [`crate::io::TensorMap`] holds it: shape and row-major values.
type Tensor = (Vec<usize>, Vec<f32>);

/// The side of a square grid of `n` cells.
fn square_side(n: usize, what: &str) -> Result<usize> {
    let side = n.isqrt();
    ensure!(side * side == n, "{what} has {n} grid cells, not a square grid");
    Ok(side)
}

/// facebookresearch/mae `util/pos_embed.py::interpolate_pos_embed` (from DeiT): the position
/// embedding `[1, extra + g*g, D]` of a square `g x g` patch grid for a `grid = (rows, columns)`
/// one. The `extra` leading tokens (class token) are kept; the grid part is resized as a `[D, g, g]`
/// image by `F.interpolate(mode='bicubic', align_corners=False)`. A square target is the official
/// function; another is the same computation (timm's `resample_abs_pos_embed` with
/// `antialias=False`). An embedding already of `grid` is returned as it is.
pub fn interpolate_pos_embed(pos_embed: &Tensor, extra: usize, grid: (usize, usize)) -> Result<Tensor> {
    let (shape, v) = pos_embed;
    ensure!(shape.len() == 3 && shape[0] == 1, "a position embedding is [1, tokens, dim], not {shape:?}");
    let (n, d) = (shape[1], shape[2]);
    ensure!(n >= extra, "a position embedding of {n} tokens has no {extra} extra tokens");
    let g = square_side(n - extra, "the position embedding")?;
    if (g, g) == grid {
        return Ok(pos_embed.clone());
    }
    let cells = &v[extra * d..];
    let planar: Vec<f32> = (0..d).flat_map(|k| (0..g * g).map(move |i| cells[i * d + k])).collect();
    let resized = resize(&planar, d, (g, g), grid, Resample::Bicubic, false);
    let m = grid.0 * grid.1;
    let mut out = v[..extra * d].to_vec();
    out.extend((0..m).flat_map(|i| (0..d).map(move |k| (i, k))).map(|(i, k)| resized[k * m + i]));
    Ok((vec![1, extra + m, d], out))
}

/// How a relative position bias table is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelPosResize {
    /// The official fine-tuning codes of BEiT (microsoft/unilm `beit/run_class_finetuning.py`) and
    /// SimMIM (`utils.py`, Swin and ViT): the source offsets are spread on a geometric progression
    /// that reaches the new table's edge, then each head's table is interpolated at the integer
    /// offsets with `scipy.interpolate.interp2d(kind='cubic')`, an interpolating bicubic spline
    /// (FITPACK's `regrid` with s=0: not-a-knot; offsets past the source's edge take the edge's
    /// value). Reproduced here as a separable not-a-knot cubic spline, the same function.
    #[default]
    Spline,
    /// timm 1.0's `resize_rel_pos_bias_table` (its BEiT and Swin `checkpoint_filter_fn`, without
    /// `TIMM_USE_SCIPY_INTERP`): the same geometric offsets, interpolated linearly (timm's
    /// `RegularGridInterpolator`, clamped at the edge). timm calls it "comparable" to scipy's.
    Linear,
    /// microsoft/Swin-Transformer `utils.py::load_pretrained`: the table as a `[heads, 2w-1, 2w-1]`
    /// image, `F.interpolate(mode='bicubic', align_corners=False)`.
    Bicubic,
}

/// A relative position bias table `[(2w-1)^2 + extra, heads]` of a square `w x w` window (BEiT: the
/// patch grid, `extra` 3: the cls-to-token, token-to-cls and cls-to-cls rows, kept as they are;
/// Swin: the attention window, `extra` 0) for a `window = (rows, columns)` one, by `method`. The
/// references handle square windows; another is resized per axis (as timm does). A table already
/// of `window` is returned as it is.
pub fn resize_rel_pos_bias_table(
    table: &Tensor,
    extra: usize,
    window: (usize, usize),
    method: RelPosResize,
) -> Result<Tensor> {
    let (shape, v) = table;
    ensure!(shape.len() == 2, "a relative position bias table is [positions, heads], not {shape:?}");
    let (n, heads) = (shape[0], shape[1]);
    ensure!(n >= extra, "a relative position bias table of {n} rows has no {extra} extra rows");
    let s = square_side(n - extra, "the relative position bias table")?;
    ensure!(s % 2 == 1, "a relative position bias table has (2w-1)^2 grid rows, not {s}^2");
    ensure!(window.0 > 0 && window.1 > 0, "a window of {window:?} has no relative positions");
    let to = (2 * window.0 - 1, 2 * window.1 - 1);
    if (s, s) == to {
        return Ok(table.clone());
    }
    let planar: Vec<f32> = (0..heads).flat_map(|h| (0..s * s).map(move |i| v[i * heads + h])).collect();
    let resized = match method {
        RelPosResize::Bicubic => resize(&planar, heads, (s, s), to, Resample::Bicubic, false),
        RelPosResize::Spline | RelPosResize::Linear => {
            let axis = |dst: usize| -> Result<Vec<Vec<f64>>> {
                let (from, at) = (geometric_offsets(s, dst), (0..dst).map(|i| i as f64 - (dst / 2) as f64));
                if method == RelPosResize::Linear {
                    return Ok(at.map(|t| linear_weights(&from, t)).collect());
                }
                ensure!(s >= 4, "scipy's cubic spline needs 4 offsets a side; this table has {s} (window 2)");
                let c = spline_second_derivatives(&from);
                Ok(at.map(|t| spline_weights(&from, &c, t)).collect())
            };
            let (wy, wx) = (axis(to.0)?, axis(to.1)?);
            let mut out = Vec::with_capacity(heads * to.0 * to.1);
            for z in planar.chunks(s * s) {
                // Columns, then rows.
                let tmp: Vec<f64> = z
                    .chunks(s)
                    .flat_map(|row| wx.iter().map(move |w| w.iter().zip(row).map(|(w, &v)| w * v as f64).sum::<f64>()))
                    .collect();
                for w in &wy {
                    out.extend(
                        (0..to.1).map(|c| w.iter().enumerate().map(|(i, w)| w * tmp[i * to.1 + c]).sum::<f64>() as f32),
                    );
                }
            }
            out
        }
    };
    let m = to.0 * to.1;
    let mut out: Vec<f32> =
        (0..m).flat_map(|i| (0..heads).map(move |h| (i, h))).map(|(i, h)| resized[h * m + i]).collect();
    out.extend_from_slice(&v[(n - extra) * heads..]);
    Ok((vec![m + extra, heads], out))
}

/// unilm's source offsets for `src` table positions a side resized to `dst`: `0, ±1, ±(1 + q),
/// ±(1 + q + q^2), ...` with `q` bisected (as the Python does, in f64) so that the progression's
/// sum over `src / 2` terms reaches `dst / 2`.
fn geometric_offsets(src: usize, dst: usize) -> Vec<f64> {
    let sum = |r: f64, n: usize| (1.0 - r.powf(n as f64)) / (1.0 - r);
    let (mut left, mut right, mut q) = (1.01f64, 1.5f64, 0.0);
    while right - left > 1e-6 {
        q = (left + right) / 2.0;
        if sum(q, src / 2) > (dst / 2) as f64 {
            right = q;
        } else {
            left = q;
        }
    }
    let mut dis = Vec::with_capacity(src / 2);
    let mut cur = 1.0;
    for i in 0..src / 2 {
        dis.push(cur);
        cur += q.powf((i + 1) as f64);
    }
    dis.iter().rev().map(|d| -d).chain(std::iter::once(0.0)).chain(dis.iter().copied()).collect()
}

/// timm's `RegularGridInterpolator` along one axis: weights over the `x` values at `t`, linear
/// between the neighbours, the edge value outside.
fn linear_weights(x: &[f64], t: f64) -> Vec<f64> {
    let n = x.len();
    // torch.bucketize: the first index whose position is >= t.
    let right = x.iter().position(|&p| p >= t).unwrap_or(n - 1);
    let left = right.saturating_sub(1);
    let (mut dl, mut dr) = ((t - x[left]).max(0.0), (x[right] - t).max(0.0));
    if dl == 0.0 && dr == 0.0 {
        (dl, dr) = (1.0, 1.0);
    }
    let mut w = vec![0.0; n];
    w[left] += dr / (dl + dr);
    w[right] += dl / (dl + dr);
    w
}

/// The not-a-knot cubic spline through values `y` at `x` has second derivatives `C y` at the
/// knots; returns `C` (`n x n`, row-major). Needs `n >= 4`.
fn spline_second_derivatives(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let h: Vec<f64> = x.windows(2).map(|p| p[1] - p[0]).collect();
    // A M = B y: continuity of the first derivative inside, of the third at x[1] and x[n-2].
    let (mut a, mut b) = (vec![0.0; n * n], vec![0.0; n * n]);
    a[0] = -h[1];
    a[1] = h[0] + h[1];
    a[2] = -h[0];
    for i in 1..n - 1 {
        a[i * n + i - 1] = h[i - 1];
        a[i * n + i] = 2.0 * (h[i - 1] + h[i]);
        a[i * n + i + 1] = h[i];
        b[i * n + i - 1] = 6.0 / h[i - 1];
        b[i * n + i] = -6.0 / h[i - 1] - 6.0 / h[i];
        b[i * n + i + 1] = 6.0 / h[i];
    }
    let last = (n - 1) * n;
    a[last + n - 3] = -h[n - 2];
    a[last + n - 2] = h[n - 3] + h[n - 2];
    a[last + n - 1] = -h[n - 3];
    // Gauss-Jordan with partial pivoting: B becomes A^-1 B.
    for col in 0..n {
        let p = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).expect("rows");
        for k in 0..n {
            a.swap(col * n + k, p * n + k);
            b.swap(col * n + k, p * n + k);
        }
        let pivot = a[col * n + col];
        for k in 0..n {
            a[col * n + k] /= pivot;
            b[col * n + k] /= pivot;
        }
        for r in (0..n).filter(|&r| r != col) {
            let f = a[r * n + col];
            for k in 0..n {
                a[r * n + k] -= f * a[col * n + k];
                b[r * n + k] -= f * b[col * n + k];
            }
        }
    }
    b
}

/// Weights over the `x` values of the not-a-knot spline (second derivatives `c y`) at `t`,
/// clamped into `[x[0], x[n-1]]` as FITPACK's evaluation does.
fn spline_weights(x: &[f64], c: &[f64], t: f64) -> Vec<f64> {
    let n = x.len();
    let t = t.clamp(x[0], x[n - 1]);
    let j = x[..n - 1].iter().rposition(|&p| p <= t).unwrap_or(0);
    let h = x[j + 1] - x[j];
    let (a, b) = ((x[j + 1] - t) / h, (t - x[j]) / h);
    let (ca, cb) = ((a * a * a - a) * h * h / 6.0, (b * b * b - b) * h * h / 6.0);
    let mut w: Vec<f64> = (0..n).map(|k| ca * c[j * n + k] + cb * c[(j + 1) * n + k]).collect();
    w[j] += a;
    w[j + 1] += b;
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spline_reproduces_cubics_and_passes_through_its_knots() {
        // A not-a-knot spline reproduces any cubic exactly; on the knots it is the data.
        let x = geometric_offsets(7, 13);
        let c = spline_second_derivatives(&x);
        let f = |t: f64| 0.3 * t * t * t - t * t + 2.0 * t - 1.0;
        let y: Vec<f64> = x.iter().map(|&t| f(t)).collect();
        for t in [-4.5, -2.0, 0.3, 1.7, 4.4] {
            let v: f64 = spline_weights(&x, &c, t).iter().zip(&y).map(|(w, y)| w * y).sum();
            assert!((v - f(t)).abs() < 1e-9 * f(t).abs().max(1.0), "{t}: {v} vs {}", f(t));
        }
        for (k, &t) in x.iter().enumerate() {
            let w = spline_weights(&x, &c, t);
            assert!(w.iter().enumerate().all(|(i, v)| (v - f64::from(i == k)).abs() < 1e-12));
        }
        // Past the edges (4.75 for a 7 -> 13 table with q at its 1.5 bound), the edge's value.
        assert_eq!(spline_weights(&x, &c, -6.0), spline_weights(&x, &c, x[0]));
    }

    #[test]
    fn shapes_are_checked_and_a_same_size_table_is_returned_as_is() {
        let table = (vec![52, 2], (0..104).map(|v| v as f32).collect());
        assert_eq!(resize_rel_pos_bias_table(&table, 3, (4, 4), RelPosResize::Spline).unwrap(), table);
        assert!(resize_rel_pos_bias_table(&table, 2, (4, 4), RelPosResize::Spline).is_err());
        let small = (vec![9, 1], vec![0.0; 9]);
        let err = resize_rel_pos_bias_table(&small, 0, (3, 3), RelPosResize::Spline).unwrap_err().to_string();
        assert!(err.contains("4 offsets"), "{err}");
        assert_eq!(resize_rel_pos_bias_table(&small, 0, (3, 3), RelPosResize::Linear).unwrap().0, vec![25, 1]);
        let pe = (vec![1, 17, 4], vec![0.5; 68]);
        assert_eq!(interpolate_pos_embed(&pe, 1, (4, 4)).unwrap(), pe);
        assert!(interpolate_pos_embed(&pe, 2, (4, 4)).is_err());
    }
}
