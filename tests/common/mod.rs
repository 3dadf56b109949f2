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

/// Every reference gradient (converted to burn names and layout) against ours: at most `tol`
/// absolute and 1e-3 relative to the tensor's largest entry. Reference gradients that are all zero
/// are refused (the comparison would prove nothing).
pub fn assert_gradients_close(label: &str, ours: &mim::io::TensorMap, theirs: &mim::io::TensorMap, tol: f32) {
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "same parameters have gradients");
    let (mut worst, mut worst_rel) = ((0.0f32, String::new()), (0.0f32, String::new()));
    for (name, (shape, g)) in theirs {
        assert_eq!(&ours[name].0, shape, "{name} shape");
        let scale = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-7, "{name}: the reference gradient is zero, the comparison would prove nothing");
        let d = max_diff(&ours[name].1, g);
        if d > worst.0 {
            worst = (d, name.clone());
        }
        if d / scale > worst_rel.0 {
            worst_rel = (d / scale, name.clone());
        }
    }
    eprintln!(
        "{label}: {} gradients: worst max |mim - torch| = {:.2e} ({}), worst relative to the tensor's largest entry = {:.2e} ({})",
        theirs.len(),
        worst.0,
        worst.1,
        worst_rel.0,
        worst_rel.1
    );
    assert!(worst.0 <= tol, "gradient of {} differs by {}", worst.1, worst.0);
    assert!(worst_rel.0 <= 1e-3, "gradient of {} differs by {} relative", worst_rel.1, worst_rel.0);
}
