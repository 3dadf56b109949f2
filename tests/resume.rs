//! A run killed and resumed follows exactly the trajectory of an uninterrupted run.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{mim, subset};
use mim::train::pretrain::{checkpoint_path, metrics_path, read_metrics};

fn args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain", "--model", "mae_micro", "--data", data, "--out", out, "--max-images", "1024", "--batch-size", "64",
        "--epochs", "4", "--lr", "1e-3", "--seed", "7",
    ]
}

#[test]
fn resume_after_kill_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let data = data.to_str().unwrap();
    let full = tmp.path().join("full");
    let cut = tmp.path().join("cut");

    let out = mim(&args(data, full.to_str().unwrap()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = read_metrics(&metrics_path(&full)).unwrap();
    assert_eq!(reference.len(), 64);

    // Kill -9 as soon as the first checkpoint exists: mid-run, with metrics already written past it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mim"))
        .args(args(data, cut.to_str().unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !checkpoint_path(&cut).exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_metrics(&metrics_path(&cut)).unwrap();
    assert!(before.len() < 64, "the kill came too late to test anything");

    let mut resumed = args(data, cut.to_str().unwrap());
    resumed.push("--resume");
    let out = mim(&resumed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = read_metrics(&metrics_path(&cut)).unwrap();
    assert_eq!(after.len(), 64, "metrics after resume must cover every iteration exactly once");
    for (a, b) in reference.iter().zip(&after) {
        assert_eq!(a.iteration, b.iteration);
        assert_eq!(a.loss, b.loss, "iteration {}: resumed loss differs", a.iteration);
        assert_eq!(a.lr, b.lr);
    }
}
