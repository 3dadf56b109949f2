//! Result records and the tables generated from them (`--record`, `mim results`): each evaluation
//! command appends its result with its provenance; seeds are averaged per setting; the pretraining
//! behind a checkpoint is read from it; the tables land in a document's generated block, the
//! curve over mask ratios in a plot; and the committed docs/RESULTS.md holds the tables its
//! committed records give.

mod common;

use std::path::Path;

use common::{assert_clean_error, mim, subset};
use mim::results::{BEGIN, END, SUMMARY_BEGIN, SUMMARY_END, read_records, summarise};

fn run(args: &[&str]) {
    let out = mim(args);
    assert!(out.status.success(), "mim {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An MAE pretraining on 256 images at `ratio` for `epochs`, keeping every epoch's checkpoint.
fn pretrain(dir: &Path, ratio: &str, epochs: &str) -> String {
    let data = subset();
    run(&["pretrain", "--data", data.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--max-images", "256"]
        .into_iter()
        .chain(["--batch-size", "64", "--epochs", epochs, "--mask-ratio", ratio, "--keep-checkpoints", "true"])
        .collect::<Vec<_>>());
    dir.join("checkpoint.mim").to_str().unwrap().to_string()
}

#[test]
fn records_of_knn_linprobe_and_finetune_make_tables_over_seeds_and_a_mask_ratio_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, records) = (subset(), tmp.path().join("records"));
    let data = data.to_str().unwrap();
    let file = records.join("fmnist.jsonl");
    let rec = file.to_str().unwrap();
    let knn = |study: &str, extra: &[&str]| {
        let mut args = vec!["knn", "--data", data, "--max-images", "500", "--record", rec, "--study", study];
        args.extend(extra);
        run(&args);
    };
    knn("features", &["--pixels"]);
    knn("features", &["--random-init", "--seed", "0"]);
    knn("features", &["--random-init", "--seed", "1"]);
    let half = pretrain(&tmp.path().join("r50"), "0.5", "1");
    let most = pretrain(&tmp.path().join("r75"), "0.75", "2");
    knn("ratio", &["--checkpoint", &half]);
    knn("ratio", &["--checkpoint", &most]);
    // The kept checkpoints: the run after each epoch, the last one the run's checkpoint.
    let kept = |e: u64| mim::train::trainer::kept_checkpoint(&tmp.path().join("r75"), e);
    assert_eq!(std::fs::read(kept(2)).unwrap(), std::fs::read(&most).unwrap());
    assert_eq!(mim::checkpoint::read_header(&kept(1)).unwrap().epoch, 1);
    knn("length", &["--checkpoint", kept(1).to_str().unwrap()]);
    run(&["linprobe", "--data", data, "--max-images", "500", "--checkpoint", &most, "--epochs", "2"]
        .into_iter()
        .chain(["--record", rec, "--study", "ratio"])
        .collect::<Vec<_>>());
    knn("length", &["--checkpoint", kept(2).to_str().unwrap()]);
    let out = tmp.path().join("ft");
    run(&["finetune", "--from-scratch", "--data", data, "--max-images", "128", "--batch-size", "64", "--epochs", "1"]
        .into_iter()
        .chain(["--out", out.to_str().unwrap(), "--record", rec, "--setting", "scratch"])
        .collect::<Vec<_>>());

    let all = read_records(&records).unwrap();
    assert_eq!(all.len(), 9);
    // Provenance on every record.
    for r in &all {
        assert!(!r.run.commit.is_empty() && r.run.command.contains(&r.protocol), "{r:?}");
        assert!(r.run.threads > 0 && r.seconds > 0.0 && !r.run.cpu.is_empty());
    }
    let pre = all[3].pretraining.as_ref().expect("a checkpoint's pretraining");
    assert_eq!((pre.method.as_str(), pre.model.as_str(), pre.epochs, pre.mask_ratio), ("MAE", "mae_tiny_28", 1, 0.5));
    assert!(pre.seconds > 0.0 && pre.threads > 0);
    assert_eq!((all[8].protocol.as_str(), all[8].epochs, all[8].train_images), ("finetune", 1.0, 128));
    // A kept checkpoint reads its run's records one folder up and costs only the epochs before it.
    let (first, last) = (all[5].pretraining.as_ref().unwrap(), all[7].pretraining.as_ref().unwrap());
    assert_eq!((first.epochs, last.epochs), (1, 2));
    assert!(first.run_started_unix_s.is_some() && first.run_started_unix_s == last.run_started_unix_s, "one run");
    assert!(first.threads > 0 && first.seconds > 0.0 && first.seconds < last.seconds, "{first:?} {last:?}");
    assert_eq!(last, all[4].pretraining.as_ref().unwrap(), "the last kept copy is the run's checkpoint");

    let studies = summarise(&all).unwrap();
    let names: Vec<&str> = studies.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["features", "ratio", "length", "finetune"]);
    let random = &studies[0].rows[1];
    assert_eq!(random.seeds, [0, 1]);
    assert!(random.top1.1 > 0.0, "two random initialisations give two accuracies");

    // The tables go into the document's generated block, the ratio study's curve into a plot.
    let doc = tmp.path().join("RESULTS.md");
    let summary_block = format!("{SUMMARY_BEGIN}\nstale summary\n{SUMMARY_END}\n");
    std::fs::write(&doc, format!("# Results\n\nintro\n\n{summary_block}{BEGIN}\nstale\n{END}\n\nafter\n")).unwrap();
    let plots = tmp.path().join("plots");
    run(&["results", "--records", records.to_str().unwrap(), "--write", doc.to_str().unwrap()]
        .into_iter()
        .chain(["--plots", plots.to_str().unwrap()])
        .collect::<Vec<_>>());
    let text = std::fs::read_to_string(&doc).unwrap();
    assert!(text.starts_with("# Results\n\nintro\n\n") && text.ends_with(&format!("{END}\n\nafter\n")));
    assert!(!text.contains("stale"));
    assert!(text.contains(&mim::results::markdown(&studies)), "{text}");
    // The summary opens the document: the k-NN study's best pretrained row and its best baseline.
    let summary = mim::results::summary_markdown(&studies);
    assert!(text.contains(&format!("{SUMMARY_BEGIN}\n\n{summary}")), "{text}");
    assert!(summary.contains("| features | best without pretraining |"), "{summary}");
    assert!(text.contains("| mae_tiny_28, random initialisation | knn | - | 500 |"), "{text}");
    assert!(text.contains(" ± "), "{text}");
    assert!(text.contains("![ratio](plots/ratio.png)"), "{text}");
    for study in ["ratio", "length"] {
        let png = image::open(plots.join(format!("{study}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (800, 500));
    }
    assert_eq!(mim::results::curve(&studies[2]).unwrap().x_label, "pretraining epochs");
    if let Ok(dir) = std::env::var("MIM_SCREENSHOTS") {
        std::fs::copy(plots.join("ratio.png"), Path::new(&dir).join("results_ratio.png")).unwrap();
    }
    // No curve where nothing varies.
    assert!(!plots.join("features.png").exists());
    // A document in another folder than the plots links them from where it is.
    let sub = tmp.path().join("docs").join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("r.md"), format!("{BEGIN}\n{END}\n")).unwrap();
    let doc = sub.join("r.md");
    let args = ["results", "--records", records.to_str().unwrap(), "--write", doc.to_str().unwrap(), "--plots"];
    run(&args.into_iter().chain([plots.to_str().unwrap()]).collect::<Vec<_>>());
    assert!(std::fs::read_to_string(&doc).unwrap().contains("![ratio](../../plots/ratio.png)"));
}

#[test]
fn bad_records_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = mim(&["results", "--records", "/nonexistent/records"]);
    assert_clean_error(&out, "/nonexistent/records");
    std::fs::write(tmp.path().join("a.jsonl"), "{\"not\": \"a record\"}\n").unwrap();
    let out = mim(&["results", "--records", tmp.path().to_str().unwrap()]);
    assert_clean_error(&out, "a.jsonl:1 is not a result record");
    let out = mim(&["knn", "--pixels", "--study", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--record"), "--study needs --record");
}

/// The tables in docs/RESULTS.md are the ones the committed records in docs/results give.
#[test]
fn the_docs_tables_are_generated_from_the_committed_records() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let records = root.join("docs/results");
    let all = read_records(&records).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/RESULTS.md")).unwrap();
    let studies = summarise(&all).unwrap();
    let tables = mim::results::markdown(&studies);
    assert!(doc.contains(BEGIN) && doc.contains(END));
    assert!(
        doc.contains(&mim::results::summary_markdown(&studies)),
        "docs/RESULTS.md does not open with the summary the records give: run `mim results --write docs/RESULTS.md`"
    );
    assert!(
        doc.contains(&tables),
        "docs/RESULTS.md is not what the records give: run `mim results --write docs/RESULTS.md --plots docs/results`"
    );
}

/// Every committed `mim bench` record reads back into the runs docs/PERFORMANCE.md quotes, each
/// naming its commit and machine, and `mim bench summary` prints their tables.
#[test]
fn committed_bench_records_read_back_and_summarise() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // The viewer's latencies and the bare matmul rates (`*gemm_shapes.jsonl`, one file per
        // machine) are records of other programs.
        let name = path.file_name().unwrap().to_string_lossy();
        let other = ["viewer_latency.jsonl", "gemm_shapes.jsonl"].iter().any(|f| name.ends_with(f));
        if path.extension().is_none_or(|e| e != "jsonl") || other {
            continue;
        }
        files += 1;
        let runs = mim::bench::read_runs(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(!runs.is_empty(), "{} holds no run", path.display());
        for run in &runs {
            assert!(!run.report.rows.is_empty(), "a run of {} without variants", path.display());
            assert!(run.info["commit"].as_str().is_some_and(|c| c.len() >= 7), "{}", run.provenance());
        }
        let out = mim(&["bench", "summary", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches("alternating rounds of").count(), runs.len(), "{text}");
    }
    assert!(files >= 2, "no bench records in {}", dir.display());
    let readme = dir.join("README.md");
    assert_clean_error(&mim(&["bench", "summary", readme.to_str().unwrap()]), "is not `mim bench --out` output");
}

#[test]
fn an_exported_checkpoint_keeps_its_pretraining_for_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = pretrain(&tmp.path().join("run"), "0.75", "1");
    let of = |p: &Path| mim::results::Pretraining::of_checkpoint(p).unwrap();
    let original = of(Path::new(&ck)).expect("a pretraining checkpoint's pretraining");
    let (exported, again) = (tmp.path().join("w.safetensors"), tmp.path().join("again.safetensors"));
    run(&["export", "--checkpoint", &ck, "--out", exported.to_str().unwrap(), "--half"]);
    assert_eq!(of(&exported).as_ref(), Some(&original), "export writes it into the metadata");
    let out = mim(&["inspect", exported.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("pretrained  MAE mae_tiny_28, 1 epochs, mask 0.75 ("), "{text}");
    // A conversion of the export to other names carries it on.
    run(&["convert", exported.to_str().unwrap(), again.to_str().unwrap(), "--to", "hf"]);
    assert_eq!(of(&again).as_ref(), Some(&original));
    // Weights from elsewhere have none, and are told apart from a file that is no safetensors.
    let plain = tmp.path().join("plain.safetensors");
    let cfg = mim::models::mae::MaeConfig::preset("mae_micro").unwrap();
    mim::weights::export_weights(&cfg.init(0, &burn::tensor::Device::flex()).unwrap(), &cfg, &plain).unwrap();
    assert_eq!(of(&plain), None);
    std::fs::write(tmp.path().join("text.safetensors"), "not a tensor file").unwrap();
    assert_eq!(of(&tmp.path().join("text.safetensors")), None);
}
