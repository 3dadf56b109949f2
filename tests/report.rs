//! `mim pretrain` keeps a snapshot of reconstructions per checkpoint and a record of each start;
//! `mim report` turns the run folder into one self-contained HTML page.

mod common;

use common::{assert_clean_error, mim, subset};

#[test]
fn a_run_folder_becomes_one_self_contained_page_with_curves_snapshots_and_provenance() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let data = subset();
    let args = [
        "pretrain",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "mae_micro",
        "--max-images",
        "256",
        "--batch-size",
        "64",
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--knn-images",
        "256",
        "--out",
        run.to_str().unwrap(),
    ];
    let out = mim(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // One snapshot per checkpoint, titled pictures of the same four test images.
    let snapshots: Vec<_> = (1..=2).map(|e| run.join(format!("snapshots/epoch_{e:03}.png"))).collect();
    for s in &snapshots {
        let img = image::open(s).unwrap_or_else(|e| panic!("{}: {e}", s.display()));
        assert!(img.width() > 4 * 28 * 3 && img.height() > 4 * 28 * 3, "four images, four panels, titles");
    }
    assert_ne!(std::fs::read(&snapshots[0]).unwrap(), std::fs::read(&snapshots[1]).unwrap(), "the model changed");
    let starts = std::fs::read_to_string(run.join("runs.jsonl")).unwrap();
    let start: serde_json::Value = serde_json::from_str(starts.lines().next().unwrap()).unwrap();
    assert_eq!(start["iteration"], 0);
    assert!(start["info"]["command"].as_str().unwrap().contains("pretrain"), "{start}");
    assert!(!start["info"]["commit"].as_str().unwrap().is_empty());

    let out = mim(&["report", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("MAE pretraining, epoch 2"), "the title names method and epoch");
    assert_eq!(html.matches("<svg").count(), 3, "loss, learning rate and k-NN curves");
    // The snapshots are inside the page, byte for byte.
    use base64::Engine;
    let embedded: Vec<Vec<u8>> = html
        .split("data:image/png;base64,")
        .skip(1)
        .map(|rest| base64::engine::general_purpose::STANDARD.decode(&rest[..rest.find('"').unwrap()]).unwrap())
        .collect();
    assert_eq!(embedded, snapshots.iter().map(|s| std::fs::read(s).unwrap()).collect::<Vec<_>>());
    // Nothing is fetched from elsewhere: no external scripts, styles or pictures.
    for attr in ["src=\"http", "href=\"http", "<script", "<link", "url("] {
        assert!(!html.contains(attr), "the page refers to something outside it: {attr}");
    }
    // Timings of both epochs, the configuration, the start record.
    assert!(html.contains("mae_micro") && html.contains(start["info"]["commit"].as_str().unwrap()));
    assert_eq!(html.matches("<tr><td class=\"n\">").count(), 2, "one timing row per epoch");

    assert_clean_error(&mim(&["report", tmp.path().to_str().unwrap()]), "has no metrics.jsonl");

    // After a crash: the last metrics line cut short is left out; a damaged checkpoint is said.
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"iteration\":9");
    std::fs::write(&metrics, text).unwrap();
    let out = mim(&["report", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ck = run.join("checkpoint.mim");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&mim(&["report", run.to_str().unwrap()]), "is corrupted");
}
