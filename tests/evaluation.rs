//! Evaluation protocols end to end through the CLI: pretraining with the k-NN monitor, fine-tuning
//! from it, exact resume of fine-tuning, linear probe and k-NN baselines, and their errors.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use common::{assert_clean_error, mim, subset};
use mim::checkpoint;
use mim::models::classifier::VitClassifier;
use mim::models::vit::sincos_pos_embed_2d;
use mim::train::finetune::{last_checkpoint, read_results, results_path};

fn finetune_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "finetune", "--from-scratch", "--model", "mae_micro", "--data", data, "--out", out, "--max-images", "512",
        "--batch-size", "64", "--epochs", "3", "--lr", "1e-3", "--warmup-epochs", "0.5", "--mixup", "0.8", "--cutmix",
        "1.0", "--drop-path", "0.1", "--seed", "5",
    ]
}

#[test]
fn finetune_resume_after_kill_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let data = data.to_str().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));

    let out = mim(&finetune_args(data, full.to_str().unwrap()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = read_results(&results_path(&full)).unwrap();
    assert_eq!(reference.len(), 3);

    let mut child = Command::new(env!("CARGO_BIN_EXE_mim"))
        .args(finetune_args(data, cut.to_str().unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !last_checkpoint(&cut).exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();

    let mut resumed = finetune_args(data, cut.to_str().unwrap());
    resumed.push("--resume");
    let out = mim(&resumed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = read_results(&results_path(&cut)).unwrap();
    assert_eq!(after.len(), 3, "one result per epoch after resume");
    for (a, b) in reference.iter().zip(&after) {
        assert_eq!(
            (a.epoch, a.train_loss, a.top1, a.top5),
            (b.epoch, b.train_loss, b.top1, b.top5),
            "epoch {} differs after resume",
            a.epoch
        );
    }
    assert!(
        std::fs::read(last_checkpoint(&cut)).unwrap() == std::fs::read(last_checkpoint(&full)).unwrap(),
        "the resumed fine-tuning checkpoint differs from the uninterrupted run's (cmp)"
    );
    // --eval-every 2 evaluates epochs 2 and 3 (the last) only, and trains exactly as before.
    let sparse = tmp.path().join("sparse");
    let mut args = finetune_args(data, sparse.to_str().unwrap());
    args.extend(["--eval-every", "2"]);
    let out = mim(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let evaluated = read_results(&results_path(&sparse)).unwrap();
    assert_eq!(evaluated.iter().map(|r| r.epoch).collect::<Vec<_>>(), [2, 3]);
    for (a, b) in reference[1..].iter().zip(&evaluated) {
        assert_eq!((a.epoch, a.train_loss, a.top1, a.top5), (b.epoch, b.train_loss, b.top1, b.top5));
    }
    // Fine-tuning trains the position embeddings (sin-cos in the fresh encoder), and the
    // checkpoint saves them.
    let ck = classifier_pos_embed(&last_checkpoint(&full));
    assert_ne!(ck, sincos_pos_embed_2d(64, (7, 7), true), "fine-tuning left pos_embed at its initial sin-cos values");
    assert_eq!(ck, classifier_pos_embed(&last_checkpoint(&cut)), "pos_embed differs after resume");
}

/// The position embeddings of a fine-tuned ViT classifier checkpoint.
fn classifier_pos_embed(path: &Path) -> Vec<f32> {
    let device = Device::flex();
    let ck = checkpoint::load_classifier(path, |m, spec| {
        VitClassifier::from_scratch(m.mae()?, spec.num_classes, spec.pool, 0, &device)
    })
    .unwrap();
    ck.model.pos_embed.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn pretrain_monitor_then_finetune_the_pretrained_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let data = data.to_str().unwrap();
    let pre = tmp.path().join("pre");
    let out = mim(&[
        "pretrain",
        "--model",
        "mae_micro",
        "--data",
        data,
        "--out",
        pre.to_str().unwrap(),
        "--max-images",
        "512",
        "--batch-size",
        "64",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--eval-every",
        "1",
        "--knn-images",
        "1000",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let knn = std::fs::read_to_string(pre.join("knn.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(knn.lines().next().unwrap()).unwrap();
    assert!(
        line["top1"].as_f64().unwrap() > 20.0,
        "k-NN of a (barely) trained encoder should beat chance (10%): {line}"
    );

    let ck = pre.join("checkpoint.mim");
    let ft = tmp.path().join("ft");
    let out = mim(&[
        "finetune",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        data,
        "--out",
        ft.to_str().unwrap(),
        "--max-images",
        "512",
        "--batch-size",
        "64",
        "--epochs",
        "1",
        "--trainable-blocks",
        "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = read_results(&results_path(&ft)).unwrap();
    assert_eq!(results.len(), 1);
    assert!(results[0].top1 > 10.0 && results[0].top5 >= results[0].top1);
    // Partial fine-tuning keeps the embedding, position embeddings included, as pretrained.
    let pretrained = checkpoint::load(&ck, &Device::flex())
        .unwrap()
        .model
        .pos_embed
        .val()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(classifier_pos_embed(&last_checkpoint(&ft)), pretrained);

    // A classifier checkpoint is not a pretraining checkpoint.
    let out = mim(&["knn", "--checkpoint", ft.join("best.mim").to_str().unwrap(), "--data", data]);
    assert_clean_error(&out, "fine-tuned classifier checkpoint");
}

fn top1(stdout: &[u8]) -> f64 {
    let s = String::from_utf8_lossy(stdout);
    let at = s.find("top-1 ").unwrap_or_else(|| panic!("no accuracy in: {s}")) + 6;
    s[at..].split('%').next().unwrap().parse().unwrap()
}

#[test]
fn pixel_baselines_are_far_above_chance() {
    let data = subset();
    let data = data.to_str().unwrap();
    let out = mim(&["knn", "--pixels", "--data", data]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        top1(&out.stdout) > 75.0,
        "k-NN on Fashion-MNIST pixels reaches ~80%: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = mim(&["linprobe", "--pixels", "--data", data]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        top1(&out.stdout) > 75.0,
        "a linear probe on pixels reaches ~80%: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn evaluation_commands_reject_bad_input_clearly() {
    let data = subset();
    let data = data.to_str().unwrap();
    assert_clean_error(&mim(&["finetune", "--data", data]), "--from-scratch");
    assert_clean_error(&mim(&["knn", "--data", data]), "--pixels");
    assert_clean_error(&mim(&["linprobe", "--checkpoint", "/nonexistent.mim", "--data", data]), "/nonexistent.mim");
    assert_clean_error(&mim(&["finetune", "--from-scratch", "--layer-decay", "1.5", "--data", data]), "--layer-decay");
}

#[test]
fn simmim_encoder_finetunes_as_a_swin_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let data = data.to_str().unwrap();
    let pre = tmp.path().join("pre");
    let out = mim(&[
        "pretrain",
        "--method",
        "simmim",
        "--data",
        data,
        "--out",
        pre.to_str().unwrap(),
        "--max-images",
        "256",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ck = pre.join("checkpoint.mim");
    let ft = tmp.path().join("ft");
    let out = mim(&[
        "finetune",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        data,
        "--out",
        ft.to_str().unwrap(),
        "--max-images",
        "256",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = read_results(&results_path(&ft)).unwrap();
    assert!(results[0].top1 > 10.0, "a Swin fine-tuned from SimMIM should beat chance: {:?}", results[0]);
    // Partial fine-tuning: the last Swin block (plus the norm and head) trains.
    let out = mim(&[
        "finetune",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        data,
        "--out",
        tmp.path().join("p").to_str().unwrap(),
        "--max-images",
        "256",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--trainable-blocks",
        "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("last 1 of"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ablation_sweeps_write_a_table_beside_the_paper_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let out = tmp.path().join("target");
    let records = tmp.path().join("records").join("ablation.jsonl");
    let args = [
        "ablate",
        "target",
        "--quick",
        "--model",
        "mae_micro",
        "--max-images",
        "256",
        "--batch-size",
        "64",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--record",
        records.to_str().unwrap(),
    ];
    let first = mim(&args);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("| pixel (w/ norm) |") && table.contains("| 85.4 | 73.9 |"), "{table}");
    // Without --tokenizer the dVAE-token row is left out; PCA needs nothing.
    assert!(table.contains("| PCA |") && table.contains("| 84.6 | 72.3 |") && !table.contains("dVAE"), "{table}");
    assert!(out.join("plot.png").exists());
    // A rerun finds every setting done and rebuilds the same table without training.
    let again = mim(&args);
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stderr).matches("done earlier, skipped").count(), 3);
    assert_eq!(std::fs::read_to_string(out.join("table.md")).unwrap(), table);
    // --record: a linear probe and a fine-tuning record per setting, written once (the rerun trained
    // nothing), with the pretraining behind them; the table's linear column is the probe's record.
    let recs = mim::results::read_records(records.parent().unwrap()).unwrap();
    assert_eq!(recs.len(), 6, "{recs:?}");
    for r in &recs {
        assert_eq!(r.study, "MAE ablation: target");
        let p = r.pretraining.as_ref().expect("the setting's pretraining");
        assert_eq!((p.method.as_str(), p.model.as_str(), p.epochs), ("MAE", "mae_micro", 2));
        assert!(r.top1 > 0.0 && r.seconds > 0.0 && r.run.command.contains("--record"), "{r:?}");
    }
    let probe = recs.iter().find(|r| r.protocol == "linprobe" && r.setting.starts_with("PCA: MAE")).unwrap();
    assert!(table.contains(&format!("| {:.2} |", probe.top1)), "{table}\n{probe:?}");
    assert_eq!(recs.iter().filter(|r| r.protocol == "finetune").count(), 3);
}
