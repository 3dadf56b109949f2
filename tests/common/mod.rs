//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shipped Fashion-MNIST subset.
pub fn subset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-subset")
}

/// Runs the `mim` binary with `args`.
pub fn mim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mim")).args(args).output().expect("run mim")
}

/// Asserts a failed run printed one clear error line (no panic) containing `needle`.
pub fn assert_clean_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no 'error:' line in: {err}"));
    assert!(line.contains(needle), "error line lacks '{needle}': {line}");
}

/// Largest absolute difference of two equally long slices.
pub fn max_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "length");
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// The q, k and v parts of a fused qkv weight in burn layout `[in, 3D]` (the thirds of every row:
/// PyTorch's `[3D, in]` stacks q, k, v as row blocks, which the transpose turns into column blocks)
/// or of a qkv bias `[3D]`.
pub fn qkv_parts(shape: &[usize], v: &[f32]) -> [Vec<f32>; 3] {
    let out = *shape.last().expect("a tensor with dimensions");
    assert!(shape.len() <= 2 && out.is_multiple_of(3), "a fused qkv weight [in, 3D] or bias [3D], got {shape:?}");
    let d = out / 3;
    std::array::from_fn(|part| v.chunks_exact(out).flat_map(|row| &row[part * d..(part + 1) * d]).copied().collect())
}

/// The largest absolute and relative differences seen so far, with what they were seen in.
#[derive(Default)]
struct Worst {
    abs: (f32, String),
    rel: (f32, String),
    count: usize,
}

impl Worst {
    /// Compares `ours` with `theirs`, relative to the largest entry of `theirs`, which must not be zero.
    fn note(&mut self, what: String, ours: &[f32], theirs: &[f32]) {
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-7, "{what}: the reference gradient is zero, the comparison would prove nothing");
        let d = max_diff(ours, theirs);
        if d > self.abs.0 {
            self.abs = (d, what.clone());
        }
        if d / scale > self.rel.0 {
            self.rel = (d / scale, what);
        }
        self.count += 1;
    }

    fn assert_within(&self, tol: f32, relative_to: &str) {
        assert!(self.abs.0 <= tol, "gradient of {} differs by {}", self.abs.1, self.abs.0);
        assert!(self.rel.0 <= 1e-3, "gradient of {} differs by {} relative to {relative_to}", self.rel.1, self.rel.0);
    }
}

/// Every reference gradient (converted to burn names and layout) against ours: at most `tol`
/// absolute and 1e-3 relative to the tensor's largest entry. Reference gradients that are all zero
/// are refused (the comparison would prove nothing).
///
/// Every fused `*qkv.weight` / `*qkv.bias` gradient is also split into its q, k and v parts, each
/// checked against its own largest entry (same `tol` and 1e-3): checked as one tensor, the largest
/// part sets the scale and hides relative errors in the others. The key part of a qkv bias is the
/// exception: a key bias adds `q·b` to a whole row of scores, which softmax ignores, so its gradient
/// is zero up to rounding on both sides (BEiT's reference is exactly zero, `weights::beit_from_official`
/// fills it in); both must stay below 1e-6. Both summaries are printed before anything is asserted.
pub fn assert_gradients_close(label: &str, ours: &mim::io::TensorMap, theirs: &mim::io::TensorMap, tol: f32) {
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "same parameters have gradients");
    let (mut tensors, mut parts, mut key_bias) = (Worst::default(), Worst::default(), 0f32);
    for (name, (shape, g)) in theirs {
        assert_eq!(&ours[name].0, shape, "{name} shape");
        tensors.note(name.clone(), &ours[name].1, g);
        if !(name.ends_with("qkv.weight") || name.ends_with("qkv.bias")) {
            continue;
        }
        for ((role, o), t) in ["q", "k", "v"].into_iter().zip(qkv_parts(shape, &ours[name].1)).zip(qkv_parts(shape, g))
        {
            if role == "k" && name.ends_with("qkv.bias") {
                key_bias = o.iter().chain(&t).fold(key_bias, |m, v| m.max(v.abs()));
            } else {
                parts.note(format!("{name} [{role}]"), &o, &t);
            }
        }
    }
    eprintln!(
        "{label}: {} gradients: worst max |mim - torch| = {:.2e} ({}), worst relative to the tensor's largest entry = {:.2e} ({})",
        tensors.count, tensors.abs.0, tensors.abs.1, tensors.rel.0, tensors.rel.1
    );
    eprintln!(
        "{label}: {} q/k/v parts of fused qkv gradients: worst max |mim - torch| = {:.2e} ({}), worst relative to the part's largest entry = {:.2e} ({}); largest key-bias gradient {key_bias:.1e}",
        parts.count, parts.abs.0, parts.abs.1, parts.rel.0, parts.rel.1
    );
    tensors.assert_within(tol, "the tensor's largest entry");
    assert!(parts.count > 0, "no fused qkv gradient among the parameters: the q/k/v checks would prove nothing");
    parts.assert_within(tol, "the part's largest entry");
    assert!(key_bias <= 1e-6, "the key-bias gradient should vanish, got {key_bias}");
}
