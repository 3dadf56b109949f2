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
