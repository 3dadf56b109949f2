//! Reliability: the issue-25 crash inputs give one clean error line, and two runs never share a folder.

mod common;

use common::{assert_clean_error, mim, subset};
use std::process::{Command, Stdio};

fn pretrain_args(out: &str) -> Vec<String> {
    let data = subset();
    [
        "pretrain",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out,
        "--model",
        "mae_micro",
        "--max-images",
        "256",
        "--batch-size",
        "64",
        "--epochs",
        "2",
    ]
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
    assert_clean_error(
        &mim(&["pretrain", "--data", tmp.path().to_str().unwrap(), "--out", out.to_str().unwrap()]),
        "include a zero",
    );
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
    assert_clean_error(
        &mim(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", st.to_str().unwrap()]),
        "is corrupted",
    );
    assert_clean_error(&mim(&["reconstruct", "--checkpoint", ck.to_str().unwrap()]), "is corrupted");
}

#[test]
fn a_folder_locked_by_another_process_is_refused_with_its_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let _held = mim::train::lock::lock_run_dir(&run).unwrap();
    let args = pretrain_args(run.to_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_mim")).args(&args).output().unwrap();
    assert_clean_error(&out, &format!("is in use by process {}", std::process::id()));
    assert!(
        !run.join("checkpoint.mim").exists() && !run.join("metrics.jsonl").exists(),
        "the refused run wrote into the folder"
    );
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
    let iterations: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(iterations, (1..=8).collect::<Vec<_>>());
    let header = mim::checkpoint::read_header(&run.join("checkpoint.mim")).unwrap();
    assert_eq!(header.iteration, 8);
    let winner_seed = header.seed;
    assert!(winner_seed == 1 || winner_seed == 2);
    assert!(!run.join("checkpoint.tmp").exists());
}

/// Trains the small run of [`pretrain_args`] with `extra` flags into `dir`, which must succeed.
fn trained(dir: &std::path::Path, extra: &[&str]) {
    let args = pretrain_args(dir.to_str().unwrap());
    let o = mim(&[&args.iter().map(String::as_str).collect::<Vec<_>>()[..], extra].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn mim_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mim")).current_dir(dir).args(args).output().unwrap()
}

fn losses(run: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string()).collect()
}

/// Raw IDX images and labels: `n` blank 28x28 images.
fn tiny_idx(dir: &std::path::Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut img = vec![0u8, 0, 8, 3];
    [n, 28, 28].iter().for_each(|d| img.extend(d.to_be_bytes()));
    img.extend((0..n as usize * 784).map(|i| (i % 251) as u8));
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).unwrap();
    let mut lab = vec![0u8, 0, 8, 1];
    lab.extend(n.to_be_bytes());
    lab.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join("train-labels-idx1-ubyte"), lab).unwrap();
}

#[test]
fn resume_takes_the_run_from_its_checkpoint_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_idx(&tmp.path().join("data"), 256);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = tmp.path().join("run");
    let full = tmp.path().join("full");
    // Started with a relative --data and --lr; resumed from another directory with --out alone.
    let start = |out: &std::path::Path, epochs: &str, resume: bool| {
        let mut a = vec![
            "pretrain",
            "--data",
            "data",
            "--out",
            out.to_str().unwrap(),
            "--model",
            "mae_micro",
            "--max-images",
            "256",
            "--batch-size",
            "64",
            "--lr",
            "1e-3",
            "--seed",
            "3",
            "--epochs",
            epochs,
        ];
        a.extend(resume.then_some("--resume"));
        let o = mim_in(tmp.path(), &a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // The reference: resumed the old way, from the same directory with every flag repeated.
    start(&full, "1", false);
    start(&full, "2", true);
    start(&run, "1", false);
    let before = std::fs::read(run.join("checkpoint.mim")).unwrap();

    // Settings that define the run are refused by name, and the refusal touches nothing.
    let r = run.to_str().unwrap();
    let o = mim_in(&elsewhere, &["pretrain", "--out", r, "--resume", "--seed", "4", "--batch-size", "32"]);
    assert_clean_error(&o, "different batch size (--batch-size 32; the run has 64), seed (--seed 4; the run has 3)");
    assert_eq!(std::fs::read(run.join("checkpoint.mim")).unwrap(), before);

    let o = mim_in(&elsewhere, &["pretrain", "--out", r, "--resume", "--epochs", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&run), losses(&full), "--out alone must resume the same run as every flag repeated");

    // The data moved and something smaller stands in for it: the iterations per epoch tell.
    std::fs::rename(tmp.path().join("data"), tmp.path().join("moved")).unwrap();
    let o = mim_in(&elsewhere, &["pretrain", "--out", r, "--resume", "--epochs", "3"]);
    assert_clean_error(&o, "does not exist from here: pass --data");
    tiny_idx(&tmp.path().join("small"), 128);
    let small = tmp.path().join("small");
    let o =
        mim_in(&elsewhere, &["pretrain", "--out", r, "--resume", "--epochs", "3", "--data", small.to_str().unwrap()]);
    assert_clean_error(&o, "4 iterations per epoch");
    let moved = tmp.path().join("moved");
    let o =
        mim_in(&elsewhere, &["pretrain", "--out", r, "--resume", "--epochs", "3", "--data", moved.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn optimizer_numbers_are_refused_with_accurate_messages() {
    let data = subset();
    let d = data.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--max-images", "0"], "--max-images must be at least 1"),
        (&["--lr", "inf"], "the learning rate is inf: it must be a finite number"),
        (
            &["--lr", "1e-3", "--min-lr", "10"],
            "--min-lr 10 and --warmup-lr 0 must not exceed the peak learning rate 0.001",
        ),
        (&["--clip-grad", "-1"], "--clip-grad -1 must be a finite value >= 0"),
        (&["--lr", "NaN"], "the learning rate is NaN: it must be a finite number"),
        (&["--lr", "0"], "the learning rate is 0: it must be positive"),
        (&["--weight-decay", "-5"], "--weight-decay -5 must be a finite value >= 0"),
        (&["--min-lr", "-0.5"], "--min-lr -0.5 must be a finite value >= 0"),
    ];
    for (flags, needle) in cases {
        let args = [&["pretrain", "--data", d, "--out", "/tmp/mim-never"][..], flags].concat();
        assert_clean_error(&mim(&args), needle);
        let args = [&["tokenizer", "train", "--data", d, "--out", "/tmp/mim-never"][..], flags].concat();
        assert_clean_error(&mim(&args), needle);
    }
}

#[test]
fn a_damaged_checkpoint_is_refused_and_an_intact_one_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    trained(&run, &[]);
    let good = std::fs::read(run.join("checkpoint.mim")).unwrap();
    let st = tmp.path().join("w.safetensors");
    let export =
        |ck: &std::path::Path| mim(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", st.to_str().unwrap()]);
    let bad = tmp.path().join("bad.mim");
    // One flipped byte anywhere after the magic: header, model or optimizer section, or a frame.
    for at in [9, 20, 200, good.len() / 2, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x10;
        std::fs::write(&bad, b).unwrap();
        assert_clean_error(&export(&bad), "is corrupted");
    }
    std::fs::write(&bad, &good[..good.len() - 3]).unwrap();
    assert_clean_error(&export(&bad), "is corrupted");
    assert!(export(&run.join("checkpoint.mim")).status.success());
}

#[test]
fn no_output_flag_replaces_a_run_or_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    trained(&run, &[]);
    let ck = run.join("checkpoint.mim");
    let (c, metrics) = (ck.to_str().unwrap(), run.join("metrics.jsonl"));
    let kept = |f: &std::path::Path| std::fs::read(f).unwrap();
    let (ck_bytes, metrics_bytes) = (kept(&ck), kept(&metrics));
    assert_clean_error(&mim(&["export", "--checkpoint", c, "--out", c]), "name the output .safetensors");
    assert_clean_error(
        &mim(&["report", run.to_str().unwrap(), "--out", metrics.to_str().unwrap()]),
        "name the output .html",
    );
    let st = tmp.path().join("w.safetensors");
    let s = st.to_str().unwrap();
    assert!(mim(&["export", "--checkpoint", c, "--out", s]).status.success());
    assert_clean_error(&mim(&["convert", s, s, "--to", "timm"]), "is also the input");
    let pics = tmp.path().join("pics");
    let o = mim(&["reconstruct", "--checkpoint", s, "--out", pics.to_str().unwrap()]);
    assert_clean_error(&o, "is a weights file (safetensors or PyTorch), not a mim checkpoint");
    let d = subset();
    let embed = ["embed", "--checkpoint", c, "--data", d.to_str().unwrap(), "--out", c];
    assert_clean_error(&mim(&embed), "name the output .safetensors");

    // --resume-from into a folder that holds another run.
    let other = tmp.path().join("other");
    trained(&other, &["--seed", "5"]);
    let other_bytes = kept(&other.join("checkpoint.mim"));
    let mut args = pretrain_args(other.to_str().unwrap());
    args.extend(["--resume-from", c].map(String::from));
    let o = mim(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_clean_error(&o, "already holds a");
    assert_eq!(kept(&other.join("checkpoint.mim")), other_bytes);
    let o = mim(&["finetune", "--resume", "--out", run.to_str().unwrap()]);
    assert_clean_error(&o, "holds a pretraining run, not a fine-tuning");
    let o = mim(&[
        "finetune",
        "--checkpoint",
        c,
        "--model",
        "mae_tiny_28",
        "--out",
        tmp.path().join("ft").to_str().unwrap(),
    ]);
    assert_clean_error(&o, "with --checkpoint the model is the checkpoint's: drop --model");
    assert_eq!((kept(&ck), kept(&metrics)), (ck_bytes, metrics_bytes), "nothing of the run was touched");
}

#[test]
fn evaluation_settings_are_refused_before_any_feature_is_extracted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = subset();
    let base = ["--pixels", "--data", d.to_str().unwrap()];
    let knn = |flags: &[&str]| mim(&[&["knn"][..], &base, flags].concat());
    assert_clean_error(&knn(&["--temperature", "nan"]), "--temperature NaN must be a finite value > 0");
    assert_clean_error(&knn(&["--temperature=-1"]), "--temperature -1 must be a finite value > 0");
    assert_clean_error(&knn(&["--k", "0"]), "--k must be at least 1");
    assert_clean_error(&knn(&["--feature-batch", "0"]), "--feature-batch must be at least 1");
    assert_clean_error(&knn(&["--max-images", "0"]), "--max-images must be at least 1");
    let folder = tmp.path().to_str().unwrap();
    assert_clean_error(&knn(&["--record", folder]), "is a folder");
    let probe = |flags: &[&str]| mim(&[&["linprobe"][..], &base, flags].concat());
    assert_clean_error(&probe(&["--base-lr", "nan"]), "--base-lr NaN must be a finite value > 0");
    assert_clean_error(&probe(&["--weight-decay=-1"]), "--weight-decay -1 must be a finite value >= 0");
}

#[test]
fn the_demo_continues_only_its_own_run_and_says_where_to_run_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    trained(&run, &[]);
    let before = std::fs::read(run.join("checkpoint.mim")).unwrap();
    assert_clean_error(&mim(&["demo", "--out", run.to_str().unwrap()]), "is not an earlier `mim demo`");
    assert_eq!(std::fs::read(run.join("checkpoint.mim")).unwrap(), before);
    let elsewhere = tmp.path().join("demo");
    let o = mim_in(tmp.path(), &["demo", "--out", elsewhere.to_str().unwrap()]);
    assert_clean_error(&o, "run it from the repository's root");
}
