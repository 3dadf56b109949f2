//! `mim check`: the parity check a GPU machine runs with a prebuilt binary passes here on the CPU,
//! through the fused kernels and through burn's generic ops, and fails when a weight is off.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use common::mim;
use mim::check::{ensure_passed, parity};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn every_model_matches_its_fixture_through_both_paths() {
    let fused = parity(&fixtures(), &Device::flex()).unwrap();
    let generic = mim::ops::with_generic_ops(|| parity(&fixtures(), &Device::flex())).unwrap();
    for row in fused.iter().chain(&generic) {
        eprintln!("{row}");
    }
    assert_eq!(fused.len(), 4);
    assert!(fused.iter().all(|r| r.gradients > 10), "every model compares its parameters' gradients");
    ensure_passed(&fused).unwrap();
    ensure_passed(&generic).unwrap();
}

#[test]
fn a_perturbed_weight_fails_the_check_naming_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    // The files at the top (the parity fixtures; sub-folders hold other tests' fixtures).
    for path in std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()) {
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let weights = tmp.path().join("swin_tiny_weights.safetensors");
    let mut map = mim::io::read_safetensors(&weights).unwrap();
    let (_, head) =
        map.iter_mut().find(|(k, _)| k.starts_with("head") && k.ends_with("weight")).expect("a head weight");
    head.1[0] += 0.5;
    std::fs::write(&weights, mim::io::safetensors_bytes(&map).unwrap()).unwrap();
    let rows = parity(tmp.path(), &Device::flex()).unwrap();
    let err = ensure_passed(&rows).unwrap_err().to_string();
    assert!(err.contains("Swin vs timm") && !err.contains("MAE"), "{err}");
}

#[test]
fn the_command_prints_the_table_and_names_a_missing_fixture_folder() {
    let out = mim(&["check", "--fixtures", fixtures().to_str().unwrap(), "--generic-ops"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| MAE vs Hugging Face ViTMAE |") && stdout.contains("generic ops"), "{stdout}");
    common::assert_clean_error(&mim(&["check", "--fixtures", "/nonexistent"]), "--fixtures");
}
