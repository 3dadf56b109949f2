//! A run killed and resumed continues from its checkpoint (the saved iteration, weights and
//! optimizer state) and follows exactly the trajectory of an uninterrupted run.
//!
//! Equal losses alone would not prove a resume: training is deterministic, so a run that silently
//! restarted from zero would rewrite the same losses. The metrics file tells the two processes
//! apart: `elapsed_s` and `images_per_sec` are measured by the process that wrote the line.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use common::{mim, subset};
use mim::checkpoint;
use mim::train::StepMetrics;
use mim::train::pretrain::{checkpoint_path, metrics_path, read_metrics};

/// Iterations of the run: 1024 images / 64 a batch = 16 an epoch, 4 epochs.
const TOTAL: usize = 64;

fn args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain", "--model", "mae_micro", "--data", data, "--out", out, "--max-images", "1024", "--batch-size", "64",
        "--epochs", "4", "--lr", "1e-3", "--seed", "7",
    ]
}

/// The complete lines of a metrics file (a killed writer may leave half a line), each with its
/// iteration.
fn metric_lines(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| {
            (
                serde_json::from_str::<StepMetrics>(l)
                    .unwrap_or_else(|e| panic!("bad metrics line {l}: {e}"))
                    .iteration,
                l.to_string(),
            )
        })
        .collect()
}

fn wait_for(what: &str, child: &mut Child, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(child.try_wait().unwrap().is_none(), "the run finished before {what}");
        assert!(started.elapsed() < Duration::from_secs(120), "no {what} within 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts the run in `out`, kills it (-9) once its first checkpoint exists and it has written
/// metrics two iterations past it, and returns the iteration the checkpoint holds and every line
/// the killed process wrote.
fn run_and_kill(data: &str, out: &Path) -> (u64, Vec<(u64, String)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mim"))
        .args(args(data, out.to_str().unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = checkpoint_path(out);
    wait_for("the first checkpoint", &mut child, || ckpt.exists());
    let first = checkpoint::read_header(&ckpt).unwrap().iteration;
    wait_for("metrics past the checkpoint", &mut child, || {
        metric_lines(&metrics_path(out)).iter().any(|(i, _)| *i >= first + 2)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Read again: another checkpoint may have been written before the kill landed.
    let header = checkpoint::read_header(&ckpt).unwrap();
    assert!(
        header.iteration > 0 && header.iteration + 2 <= TOTAL as u64,
        "checkpoint at iteration {}",
        header.iteration
    );
    assert_eq!(header.optimizer_steps, header.iteration, "one optimizer update per batch (no accumulation)");
    (header.iteration, metric_lines(&metrics_path(out)))
}

fn resume(data: &str, out: &Path) -> Vec<(u64, String)> {
    let mut a = args(data, out.to_str().unwrap());
    a.push("--resume");
    let run = mim(&a);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    metric_lines(&metrics_path(out))
}

fn parse(line: &str) -> StepMetrics {
    serde_json::from_str(line).unwrap()
}

#[test]
fn resume_after_kill_continues_from_the_checkpoint_and_matches_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let data = data.to_str().unwrap();
    let (full, cut, stripped) = (tmp.path().join("full"), tmp.path().join("cut"), tmp.path().join("stripped"));

    let out = mim(&args(data, full.to_str().unwrap()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = read_metrics(&metrics_path(&full)).unwrap();
    assert_eq!(reference.len(), TOTAL);

    let (saved, killed) = run_and_kill(data, &cut);
    let s = saved as usize;
    assert!(killed.len() > s, "the killed run wrote no metrics past its checkpoint");
    assert!(killed.len() < TOTAL, "the kill came too late to test anything");
    let killed_iterations: Vec<u64> = killed.iter().map(|(i, _)| *i).collect();
    assert_eq!(killed_iterations, (1..=killed.len() as u64).collect::<Vec<_>>());

    // The same checkpoint without its optimizer state, resumed in a copy of the folder.
    std::fs::create_dir_all(&stripped).unwrap();
    for file in [checkpoint_path(&cut), metrics_path(&cut)] {
        std::fs::copy(&file, stripped.join(file.file_name().unwrap())).unwrap();
    }
    let ck = checkpoint::load(&checkpoint_path(&stripped), &Device::flex()).unwrap();
    assert!(ck.optimizer.is_some(), "pretraining checkpoints hold the optimizer state");
    checkpoint::save(&checkpoint_path(&stripped), &ck.header, &ck.model, None).unwrap();

    let after = resume(data, &cut);
    let iterations: Vec<u64> = after.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        iterations,
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "metrics after resume must cover every iteration exactly once"
    );
    // Up to the checkpoint: the killed process's lines, byte for byte (a run restarted from zero
    // would have rewritten them with its own timings).
    for ((_, kept), (i, written)) in after[..s].iter().zip(&killed[..s]) {
        assert_eq!(
            kept, written,
            "iteration {i} (before the checkpoint at {saved}) was rewritten by the resumed process"
        );
    }
    // After it: the resumed process's lines, from iteration saved + 1 on. The killed process wrote
    // some of these iterations too; the resumed process measured its own timings for them.
    for ((i, resumed), (_, killed_line)) in after[s..].iter().zip(&killed[s..]) {
        assert_ne!(
            resumed, killed_line,
            "iteration {i} (after the checkpoint at {saved}) is the killed process's line: it was not rerun"
        );
    }
    // The trajectory is the uninterrupted run's.
    for (a, (_, line)) in reference.iter().zip(&after) {
        let b = parse(line);
        assert_eq!((a.iteration, a.epoch), (b.iteration, b.epoch));
        assert_eq!(a.loss, b.loss, "iteration {}: resumed loss differs (checkpoint at {saved})", a.iteration);
        assert_eq!(a.lr, b.lr, "iteration {}: resumed lr differs", a.iteration);
    }
    // And so are the final checkpoints, byte for byte (parameter ids numbered, optimizer state in
    // name order, no output folder in the header): `cmp` verifies a resume.
    assert!(
        std::fs::read(checkpoint_path(&cut)).unwrap() == std::fs::read(checkpoint_path(&full)).unwrap(),
        "the resumed run's checkpoint differs from the uninterrupted run's"
    );

    // Without the optimizer state the weights are the same (iteration saved + 1, whose loss is
    // computed before any update, matches) but the next updates are not: the resumed run above
    // could only match the uninterrupted one by restoring the AdamW moments and step counts.
    let without = resume(data, &stripped);
    assert_eq!(without.len(), TOTAL);
    assert_eq!(parse(&without[s].1).loss, reference[s].loss, "the stripped checkpoint must hold the same weights");
    let diverged = (s + 1..TOTAL).filter(|&k| parse(&without[k].1).loss != reference[k].loss).count();
    assert_eq!(
        diverged,
        TOTAL - s - 1,
        "resuming without the optimizer state reproduced some losses of the uninterrupted run"
    );
}
