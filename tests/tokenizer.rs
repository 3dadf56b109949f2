//! Tokenizer training: a run killed (SIGKILL) and resumed follows exactly the trajectory of an
//! uninterrupted one; checkpoint kinds are not confused; bad settings give clear errors.
//!
//! The killed run is this test binary re-executed on its ignored `child_training` test, so the
//! test does not depend on how the CLI is wired.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use common::subset;
use mim::checkpoint::{self, CheckpointHeader};
use mim::models::mae::MaeConfig;
use mim::train::tokenizer::{
    TokenizerTrainConfig, load_tokenizer, read_tokenizer_metrics, tokenizer_checkpoint_path, tokenizer_metrics_path,
    train_tokenizer,
};
use mim::train::{RunConfig, Silent};

const CHILD_OUT: &str = "MIM_TOKENIZER_TEST_CHILD_OUT";
const ITERATIONS: usize = 4 * 1024 / 64;

fn cfg(out: &Path) -> TokenizerTrainConfig {
    let defaults = TokenizerTrainConfig::default();
    let run = RunConfig {
        data: subset(),
        out: out.to_path_buf(),
        max_images: Some(1024),
        batch_size: 64,
        epochs: 4,
        seed: 7,
        prefetch: 2,
        ..defaults.run
    };
    TokenizerTrainConfig { run, ..defaults }
}

#[test]
#[ignore = "the process killed by resume_after_kill_matches_uninterrupted_run"]
fn child_training() {
    if let Ok(out) = std::env::var(CHILD_OUT) {
        train_tokenizer(&cfg(Path::new(&out)), None, &mut Silent).unwrap();
    }
}

#[test]
fn resume_after_kill_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let cut = tmp.path().join("cut");
    let summary = train_tokenizer(&cfg(&full), None, &mut Silent).unwrap();
    assert!(summary.picture.exists());
    let reference = read_tokenizer_metrics(&tokenizer_metrics_path(&full)).unwrap();
    assert_eq!(reference.len(), ITERATIONS);
    let last = reference.last().unwrap();
    assert!(
        last.recon_loss < reference[0].recon_loss * 0.7,
        "reconstruction did not improve: {} -> {}",
        reference[0].recon_loss,
        last.recon_loss
    );
    assert!(last.codebook_usage > 0.2, "codebook collapsed: {} in use", last.codebook_usage);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_training", "--ignored", "--test-threads", "1"])
        .env(CHILD_OUT, &cut)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !tokenizer_checkpoint_path(&cut).exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_tokenizer_metrics(&tokenizer_metrics_path(&cut)).unwrap();
    assert!(before.len() < ITERATIONS, "the kill came too late to test anything");

    let ck = tokenizer_checkpoint_path(&cut);
    let mut wrong_seed = cfg(&cut);
    wrong_seed.run.seed = 8;
    let err = train_tokenizer(&wrong_seed, Some(&ck), &mut Silent).err().unwrap().to_string();
    assert!(err.contains("resume with the settings"), "{err}");

    train_tokenizer(&cfg(&cut), Some(&ck), &mut Silent).unwrap();
    let after = read_tokenizer_metrics(&tokenizer_metrics_path(&cut)).unwrap();
    assert_eq!(after.len(), ITERATIONS, "metrics after resume must cover every iteration exactly once");
    assert!(
        std::fs::read(tokenizer_checkpoint_path(&cut)).unwrap()
            == std::fs::read(tokenizer_checkpoint_path(&full)).unwrap(),
        "the resumed tokenizer checkpoint differs from the uninterrupted run's (cmp)"
    );
    for (a, b) in reference.iter().zip(&after) {
        let it = a.step.iteration;
        assert_eq!(it, b.step.iteration);
        assert_eq!(a.step.loss, b.step.loss, "iteration {it}: resumed loss differs");
        assert_eq!(a.step.lr, b.step.lr);
        assert_eq!(
            (a.perplexity, a.codebook_usage, a.restarted),
            (b.perplexity, b.codebook_usage, b.restarted),
            "iteration {it}"
        );
    }
}

#[test]
fn checkpoint_kinds_are_not_confused() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let mae_cfg = MaeConfig::preset("mae_micro").unwrap();
    let mae_path = tmp.path().join("checkpoint.mim");
    let header = CheckpointHeader {
        mim_version: "test".into(),
        model: mim::models::pretrain::ModelConfig::Mae(mae_cfg.clone()),
        train: serde_json::json!({}),
        iteration: 0,
        optimizer_steps: 0,
        epoch: 0,
        seed: 0,
        classifier: None,
    };
    checkpoint::save(&mae_path, &header, &mae_cfg.init(0, &device).unwrap(), None).unwrap();
    let err = load_tokenizer(&mae_path, &device).err().unwrap().to_string();
    assert!(
        err.contains("is a model checkpoint written by `mim pretrain`") && err.contains("not a tokenizer checkpoint"),
        "{err}"
    );

    let mut tok = cfg(&tmp.path().join("tok"));
    (tok.run.max_images, tok.run.epochs) = (Some(128), 1);
    let summary = train_tokenizer(&tok, None, &mut Silent).unwrap();
    let err = checkpoint::load(&summary.checkpoint, &device).err().unwrap().to_string();
    assert!(err.contains("is a tokenizer checkpoint written by `mim tokenizer train`"), "{err}");
    let again = train_tokenizer(&tok, None, &mut Silent).err().unwrap().to_string();
    assert!(again.contains("already holds a tokenizer run"), "{again}");
}

#[test]
fn bad_settings_name_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |c: TokenizerTrainConfig| train_tokenizer(&c, None, &mut Silent).err().unwrap().to_string();
    let base = cfg(&tmp.path().join("o"));
    let with = |change: &dyn Fn(&mut TokenizerTrainConfig)| {
        let mut c = base.clone();
        change(&mut c);
        c
    };
    assert!(err(with(&|c| c.run.batch_size = 4096)).contains("lower --batch-size"));
    assert!(err(TokenizerTrainConfig { model: "vq_huge".into(), ..base.clone() }).contains("vq_tiny_28, vq_tiny_32"));
    assert!(err(TokenizerTrainConfig { img_size: Some(30), ..base.clone() }).contains("multiple of 4"));
    assert!(err(TokenizerTrainConfig { vocab_size: Some(1), ..base.clone() }).contains("at least 2 codes"));
    assert!(err(with(&|c| c.run.data = "/nonexistent".into())).contains("does not exist"));
    assert!(!tmp.path().join("o").exists(), "a failed start must not create the output folder");
}
