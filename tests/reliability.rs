//! Reliability: the issue-25 crash inputs give one clean error line, and two runs never share a folder.

mod common;

use common::{assert_clean_error, mim, subset};
use std::process::{Command, Stdio};

fn pretrain_args(out: &str) -> Vec<String> {
    let data = subset();
    ["pretrain", "--data", data.to_str().unwrap(), "--out", out, "--model", "mae_micro", "--max-images", "256", "--batch-size", "64", "--epochs", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn idx_with_zero_columns_is_refused_before_the_run_folder_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = vec![0u8, 0, 8, 3];
    for d in [64u32, 28, 0] {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(vec![0u8; 64 * 28]);
    std::fs::write(tmp.path().join("train-images-idx3-ubyte"), bytes).unwrap();
    let out = tmp.path().join("o");
    assert_clean_error(&mim(&["pretrain", "--data", tmp.path().to_str().unwrap(), "--out", out.to_str().unwrap()]), "include a zero");
    assert!(!out.exists(), "a refused run must not leave a folder (or a metrics.jsonl) behind");
}

#[test]
fn checkpoint_with_a_huge_section_length_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("bad.mim");
    let mut bytes = b"MIMCKPT1".to_vec();
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(b"{}");
    std::fs::write(&ck, bytes).unwrap();
    let st = tmp.path().join("x.safetensors");
    assert_clean_error(&mim(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", st.to_str().unwrap()]), "corrupted or truncated");
    assert_clean_error(&mim(&["reconstruct", "--checkpoint", ck.to_str().unwrap()]), "corrupted or truncated");
}

#[test]
fn a_folder_locked_by_another_process_is_refused_with_its_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let _held = mim::train::lock::lock_run_dir(&run).unwrap();
    let args = pretrain_args(run.to_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_mim")).args(&args).output().unwrap();
    assert_clean_error(&out, &format!("is in use by process {}", std::process::id()));
    assert!(!run.join("checkpoint.mim").exists() && !run.join("metrics.jsonl").exists(), "the refused run wrote into the folder");
}

#[test]
fn two_concurrent_runs_into_one_folder_leave_exactly_one_complete_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = run.to_str().unwrap();
    let spawn = |seed: &str| {
        let mut a = pretrain_args(o);
        a.extend(["--seed".to_string(), seed.to_string()]);
        Command::new(env!("CARGO_BIN_EXE_mim")).args(&a).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (spawn("1"), spawn("2"));
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(ok.len(), 1, "exactly one run must succeed");
    let failed = outs.iter().find(|o| !o.status.success()).unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    // Usually the second is refused while the first trains; if it came late, the finished run is kept.
    assert!(err.contains("is in use by process") || err.contains("already holds a run"), "{err}");
    assert_clean_error(failed, "");
    // The folder holds one run: 2 epochs x 4 iterations of metrics, the checkpoint of the same seed.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let iterations: Vec<u64> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["iteration"].as_u64().unwrap()).collect();
    assert_eq!(iterations, (1..=8).collect::<Vec<_>>());
    let header = mim::train::checkpoint::read_header(&run.join("checkpoint.mim")).unwrap();
    assert_eq!(header.iteration, 8);
    let winner_seed = header.seed;
    assert!(winner_seed == 1 || winner_seed == 2);
    assert!(!run.join("checkpoint.tmp").exists());
}
