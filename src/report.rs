//! A pretraining run as one self-contained HTML page (`mim report RUN_DIR`): loss and learning-rate
//! curves, the k-NN monitor's accuracy, reconstructions of fixed images at each checkpoint,
//! timings per epoch, the configuration, and who ran it where (commit, machine, command). Charts
//! are inline SVG and pictures data URLs, so the file opens from disk with no server.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use base64::Engine;
use burn::tensor::Device;
use serde::Deserialize;

use crate::checkpoint::{self, CheckpointHeader};
use crate::data::Split;
use crate::models::pretrain::ModelConfig;
use crate::reconstruct::{Images, MaskChoice, Reconstructor};
use crate::train::StepMetrics;
use crate::train::trainer::{RUNS_LOG, RunStart, step_seconds, training_core_seconds, training_seconds};

/// Folder of a run where each checkpoint's reconstructions are kept (`epoch_003.png`).
pub const SNAPSHOTS: &str = "snapshots";

/// Test images drawn in every snapshot (the first ones of the test split).
const SNAPSHOT_IMAGES: usize = 4;

/// Reconstructions of the first test images under one fixed mask (seed 0), drawn from the
/// checkpoint at `checkpoint` after `epoch` epochs into `snapshots/epoch_NNN.png` beside it, so
/// that the report can show how they improve. `None` for BEiT, which predicts visual tokens.
pub fn write_snapshot(checkpoint: &Path, epoch: u64) -> Result<Option<PathBuf>> {
    if matches!(checkpoint::read_header(checkpoint)?.model, ModelConfig::Beit(_)) {
        return Ok(None);
    }
    let model = Reconstructor::from_checkpoint(checkpoint, &Device::flex())?;
    let dir = checkpoint.parent().unwrap_or(Path::new(".")).join(SNAPSHOTS);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let scratch = tempfile::tempdir_in(&dir)?;
    let mask = MaskChoice::Random { ratio: None, seed: 0 };
    let indices: Vec<usize> = (0..SNAPSHOT_IMAGES).collect();
    let images = |split| Images::Dataset { data: None, split, indices: indices.clone() };
    // Data without a test split: the first training images.
    let drawn = model
        .write_pictures(&images(Split::Test), &mask, scratch.path(), 3, true)
        .or_else(|_| model.write_pictures(&images(Split::Train), &mask, scratch.path(), 3, true))?;
    let to = dir.join(format!("epoch_{epoch:03}.png"));
    std::fs::rename(&drawn.picture, &to).with_context(|| format!("cannot write '{}'", to.display()))?;
    Ok(Some(to))
}

/// An epoch of the k-NN monitor (`knn.jsonl`).
#[derive(Debug, Clone, Deserialize)]
struct KnnRecord {
    epoch: u64,
    top1: f64,
    top5: f64,
    seconds: f64,
}

/// Writes the report of the run in `run_dir` to `out` (default `run_dir/report.html`) and returns
/// where.
pub fn write_report(run_dir: &Path, out: Option<&Path>) -> Result<PathBuf> {
    if let Some(out) = out {
        crate::io::check_output(out, "html", &[])?;
    }
    let metrics_file = crate::train::pretrain::metrics_path(run_dir);
    ensure!(
        metrics_file.exists(),
        "'{}' has no metrics.jsonl: mim report reads a run folder written by mim pretrain (its --out)",
        run_dir.display()
    );
    let metrics: Vec<StepMetrics> = crate::train::pretrain::read_metrics(&metrics_file)?;
    ensure!(!metrics.is_empty(), "'{}' is empty: the run has not finished an iteration yet", metrics_file.display());
    let ckpt = crate::train::pretrain::checkpoint_path(run_dir);
    // No checkpoint yet is a state of the run; a damaged one is the user's to know.
    let header = ckpt.exists().then(|| checkpoint::read_header(&ckpt)).transpose()?;
    let knn: Vec<KnnRecord> = read_optional(&run_dir.join("knn.jsonl"), "k-NN records")?;
    let starts: Vec<RunStart> = read_optional(&run_dir.join(RUNS_LOG), "run starts")?;
    let snapshots = snapshot_files(run_dir)?;

    let name = run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_path_buf());
    let name = name.file_name().map_or_else(|| run_dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut html = String::new();
    let title = match &header {
        Some(h) => format!("{name}: {} epoch {}", method_of(h), h.epoch),
        None => format!("{name}: pretraining (no checkpoint yet)"),
    };
    write!(html, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>", esc(&title))?;
    html.push_str(STYLE);
    write!(html, "</head><body><h1>{}</h1>", esc(&title))?;
    summary(&mut html, &metrics, header.as_ref(), &knn)?;
    curves(&mut html, &metrics, &knn)?;
    html.push_str("<h2>Reconstructions at each checkpoint</h2>");
    if snapshots.is_empty() {
        html.push_str(
            "<p class=\"muted\">None in this run: <code>mim pretrain</code> draws them into snapshots/ when it writes a \
             checkpoint (MAE and SimMIM; BEiT predicts visual tokens, not pixels).</p>",
        );
    }
    html.push_str("<div class=\"snapshots\">");
    for (epoch, file) in &snapshots {
        let png = std::fs::read(file).with_context(|| format!("cannot read '{}'", file.display()))?;
        let data = base64::engine::general_purpose::STANDARD.encode(png);
        write!(
            html,
            "<figure><img alt=\"epoch {epoch}\" src=\"data:image/png;base64,{data}\"><figcaption>after epoch {epoch}\
             </figcaption></figure>"
        )?;
    }
    html.push_str("</div>");
    timings(&mut html, &metrics, &knn)?;
    provenance(&mut html, &starts)?;
    if let Some(h) = &header {
        html.push_str("<h2>Configuration</h2><h3>Training</h3>");
        write!(html, "<pre>{}</pre>", esc(&serde_json::to_string_pretty(&h.train)?))?;
        write!(html, "<h3>Model</h3><pre>{}</pre>", esc(&serde_json::to_string_pretty(&h.model)?))?;
    }
    write!(
        html,
        "<p class=\"muted\">Written by mim {} from {}.</p></body></html>",
        env!("CARGO_PKG_VERSION"),
        esc(&run_dir.display().to_string())
    )?;

    let out = out.map_or_else(|| run_dir.join("report.html"), Path::to_path_buf);
    std::fs::write(&out, html).with_context(|| format!("cannot write '{}'", out.display()))?;
    Ok(out)
}

/// Size of each chart, drawn at its own size on the page.
const CHART: (u32, u32) = (520, 340);

const STYLE: &str = "<style>
body { font: 14px/1.5 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d2330; max-width: 1320px; margin: 24px auto; padding: 0 18px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d9dde3; padding-bottom: 4px; } h3 { font-size: 14px; }
table { border-collapse: collapse; } td, th { padding: 3px 12px 3px 0; text-align: left; vertical-align: top; } th { color: #5d6675; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } .charts svg { max-width: 100%; height: auto; border: 1px solid #d9dde3; }
.snapshots { display: flex; flex-wrap: wrap; gap: 12px; } .snapshots figure { max-width: 100%; }
figure { margin: 10px 0; } figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #d9dde3; } figcaption { color: #5d6675; font-size: 12px; }
pre { background: #f6f7f9; padding: 10px; overflow-x: auto; font-size: 12px; } code { font-size: 12px; }
.muted { color: #5d6675; }
</style>";

/// What trained the run: the pretraining method, or a fine-tuning (whose checkpoint has a head).
fn method_of(h: &CheckpointHeader) -> &'static str {
    match (h.classifier.is_some(), h.train.get("method").and_then(|m| m.as_str())) {
        (true, _) => "fine-tuning,",
        (_, Some("beit")) => "BEiT pretraining,",
        (_, Some("simmim")) => "SimMIM pretraining,",
        _ => "MAE pretraining,",
    }
}

fn summary(
    html: &mut String,
    metrics: &[StepMetrics],
    header: Option<&CheckpointHeader>,
    knn: &[KnnRecord],
) -> Result<()> {
    let last = metrics.last().expect("checked non-empty");
    let tail = &metrics[metrics.len().saturating_sub(50)..];
    let final_loss = tail.iter().map(|m| m.loss).sum::<f64>() / tail.len() as f64;
    let train_s = training_seconds(metrics.iter().map(|m| m.elapsed_s));
    html.push_str("<table>");
    let mut row = |k: &str, v: String| write!(html, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    if let Some(h) = header {
        let run = h.train.get("run");
        let get = |k: &str| run.and_then(|r| r.get(k)).map(|v| v.to_string().trim_matches('"').to_string());
        row("data", get("data").unwrap_or_default())?;
        row(
            "model",
            format!(
                "{} ({} patches of {} px, {} px images)",
                h.model.kind(),
                h.model.num_patches(),
                h.model.patch_size(),
                h.model.img_size()
            ),
        )?;
        let epochs = get("epochs").unwrap_or_default();
        row(
            "progress",
            format!("epoch {} of {epochs}, iteration {} ({} optimizer steps)", h.epoch, h.iteration, h.optimizer_steps),
        )?;
        row(
            "batch",
            format!(
                "{} x accumulation {}",
                get("batch_size").unwrap_or_default(),
                get("accum_iter").unwrap_or_default()
            ),
        )?;
        row("seed", h.seed.to_string())?;
    }
    row(
        "final loss",
        format!("{final_loss:.4} (mean of the last {} iterations; iteration {})", tail.len(), last.iteration),
    )?;
    let took = |s: f64| match s {
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.2} h", s / 3600.0),
    };
    let rate = last.images_per_sec;
    row("training time", format!("{} ({rate:.0} images/s over the last 20 iterations)", took(train_s)))?;
    // Runs from before mim measured CPU time have no such readings.
    if metrics.iter().all(|m| m.cpu_s.is_some()) {
        let cpu_s = training_core_seconds(metrics.iter().map(|m| (m.elapsed_s, m.cpu_s)), 1);
        row("CPU time", format!("{} (all threads together)", took(cpu_s)))?;
    }
    if let Some(k) = knn.last() {
        row("k-NN (last)", format!("top-1 {:.2}%, top-5 {:.2}% after epoch {}", k.top1, k.top5, k.epoch))?;
    }
    html.push_str("</table>");
    Ok(())
}

fn curves(html: &mut String, metrics: &[StepMetrics], knn: &[KnnRecord]) -> Result<()> {
    // A chart of every iteration of a long run would be megabytes: at most ~2000 points, each the
    // mean of its stretch.
    let every = metrics.len().div_ceil(2000).max(1);
    let thin = |f: &dyn Fn(&StepMetrics) -> f64| -> Vec<(f64, f64)> {
        metrics
            .chunks(every)
            .map(|c| (c.last().expect("non-empty").iteration as f64, c.iter().map(f).sum::<f64>() / c.len() as f64))
            .collect()
    };
    let losses = thin(&|m| m.loss);
    let window = (losses.len() / 25).max(5);
    html.push_str("<h2>Curves</h2><div class=\"charts\">");
    html.push_str(&crate::viz::line_chart_svg(
        CHART,
        "loss",
        "iteration",
        "loss (masked patches)",
        &crate::viz::loss_series(&losses, window),
    )?);
    html.push_str(&crate::viz::line_chart_svg(CHART, "learning rate", "iteration", "lr", &[("lr", thin(&|m| m.lr))])?);
    if !knn.is_empty() {
        let at = |f: fn(&KnnRecord) -> f64| knn.iter().map(|k| (k.epoch as f64, f(k))).collect::<Vec<_>>();
        html.push_str(&crate::viz::line_chart_svg(
            CHART,
            "k-NN accuracy on the test split (k = 20)",
            "epoch",
            "accuracy (%)",
            &[("top-1", at(|k| k.top1)), ("top-5", at(|k| k.top5))],
        )?);
    }
    html.push_str("</div>");
    Ok(())
}

fn timings(html: &mut String, metrics: &[StepMetrics], knn: &[KnnRecord]) -> Result<()> {
    html.push_str(
        "<h2>Timings</h2><table><tr><th>epoch</th><th>iterations</th><th>seconds</th><th>images/s</th>\
         <th>mean loss</th><th>k-NN seconds</th></tr>",
    );
    let dt = step_seconds(metrics.iter().map(|m| m.elapsed_s));
    let mut epoch_start = 0;
    while epoch_start < metrics.len() {
        let epoch = metrics[epoch_start].epoch;
        let len = metrics[epoch_start..].iter().take_while(|m| m.epoch == epoch).count();
        let part = &metrics[epoch_start..epoch_start + len];
        let seconds: f64 = dt[epoch_start..epoch_start + len].iter().sum();
        let rate = part.iter().map(|m| m.images_per_sec).sum::<f64>() / len as f64;
        let loss = part.iter().map(|m| m.loss).sum::<f64>() / len as f64;
        let knn_s = knn.iter().find(|k| k.epoch == epoch + 1).map_or(String::new(), |k| format!("{:.1}", k.seconds));
        write!(
            html,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{len}</td><td class=\"n\">{seconds:.1}</td><td class=\"n\">{rate:.0}</td>\
             <td class=\"n\">{loss:.4}</td><td class=\"n\">{knn_s}</td></tr>",
            epoch + 1
        )?;
        epoch_start += len;
    }
    html.push_str("</table>");
    Ok(())
}

fn provenance(html: &mut String, starts: &[RunStart]) -> Result<()> {
    html.push_str("<h2>Runs</h2>");
    if starts.is_empty() {
        html.push_str("<p class=\"muted\">No runs.jsonl: the run predates it.</p>");
        return Ok(());
    }
    html.push_str(
        "<table><tr><th>started (UTC)</th><th>from iteration</th><th>commit</th><th>CPU</th><th>threads</th><th>command</th></tr>",
    );
    for s in starts {
        let i = &s.info;
        let cpu = format!("{} ({})", i.cpu, crate::runtime::simd_label(i.avx512, i.avx512_build));
        write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
            utc(s.started_unix_s),
            s.iteration,
            esc(&i.commit),
            esc(&cpu),
            i.threads,
            esc(&i.command)
        )?;
    }
    html.push_str("</table>");
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time (civil-from-days, proleptic Gregorian).
fn utc(t: u64) -> String {
    let (days, secs) = ((t / 86_400) as i64, t % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn snapshot_files(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join(SNAPSHOTS);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let epoch = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("epoch_")?.strip_suffix(".png")?.parse().ok());
        if let Some(epoch) = epoch {
            files.push((epoch, path));
        }
    }
    files.sort();
    Ok(files)
}

fn read_optional<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    if path.exists() { crate::io::read_jsonl(path, what) } else { Ok(Vec::new()) }
}

/// `text` safe inside HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_342_400 + 3_661), "2026-12-04 01:01:01");
    }
}
