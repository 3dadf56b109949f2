//! Benchmarks (`mim bench`): mim against its PyTorch peer (`tools/peer/`) on the same machine, in
//! the same invocation, workload by workload: MAE pretraining and encoder inference, BEiT and
//! SimMIM pretraining, fine-tuning and classifier inference, and the image-folder data pipeline.
//! [`run`] measures [`BenchOptions`] into a [`BenchReport`], whose `Display` is the summary table;
//! [`speedup`] measures MAE Table 2 ([`SpeedupOptions`]).
//!
//! The host is shared and noisy, so each workload variant is built once on each side (the peer as
//! a persistent child process of its own, see [`peer`]), warmed up, and then measured in many short
//! rounds in which mim's steps and the peer's alternate (the side that goes first alternates too);
//! each ratio is taken within a round and summarised by its median and interquartile range.
//!
//! FLOPs are counted identically on both sides (the peer reports its count and [`run`] refuses a
//! peer whose count differs): matmuls only, LayerNorm, softmax, GELU ignored; per transformer block
//! `2 n (4 d^2 + 2 d m) + 4 n^2 d` for `n` tokens of width `d` and MLP width `m` (Swin: attention
//! within windows); see [`workload`] for each model. A training step is 3x the forward pass. These
//! are the model's FLOPs as the official code computes it: mim's MAE step skips part of them (the
//! last decoder block's MLP, the norm and the head on visible patches, whose predictions the loss
//! never reads; 3.1% of fmnist-tiny's step), so its GFLOP/s is the rate of the model's work.

pub mod peer;
pub mod report;
pub mod workload;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

pub use peer::{PEER_README, Peer, PeerKind, PeerSpec, check_peer_python, check_peer_script, default_peer_script};
pub use report::{BenchReport, PeerTimings, Quartiles, RecordedRun, Row, Timings, quartiles, read_runs};
pub use workload::{Flops, Measure, Task, Workload, WorkloadFlops, analytic_flops, find_workloads, workloads};

use crate::data::augment::Transform;
use crate::data::loader::load_batch;
use crate::data::{Dataset, Split};
use crate::models::mae::MaeConfig;
pub use crate::runtime::RunInfo;

/// Median and all timings of `iters` runs of `f` after `warmup` untimed ones.
pub fn time_runs(warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, Vec<f64>)> {
    for _ in 0..warmup {
        f()?;
    }
    let all = timed(iters.max(1), f)?;
    Ok((quartiles(&all).median, all))
}

/// Seconds of each of `n` calls of `f`.
fn timed(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// What `mim bench` measures: workloads, rounds, the optional PyTorch peer, and where results go.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Workloads by name (see [`workloads`]).
    pub workloads: Vec<String>,
    /// MAE workloads also measured at mask ratio 0 (the encoder sees every token: Table 2's cost).
    pub no_mask_variant: Vec<String>,
    /// Untimed steps on each side after building.
    pub warmup: usize,
    /// Timed steps per side and round.
    pub iters: usize,
    /// Alternating rounds per workload variant.
    pub rounds: usize,
    /// Python of the peer's venv, to run the PyTorch peer in the same invocation.
    pub peer: Option<PathBuf>,
    /// The peer script (`tools/peer/peer_torch.py`).
    pub peer_script: PathBuf,
    /// Also measure a `torch.compile` peer.
    pub peer_compile: bool,
    /// Seed of models, inputs and masks on both sides.
    pub seed: u64,
    /// IDX dataset the folder-jpeg workload's JPEGs are made from (and of the data-pipeline line).
    pub data: PathBuf,
    /// JSON-lines file every row is appended to.
    pub out: PathBuf,
    /// The command line, recorded in the rows.
    pub command: String,
}

/// A JSONL row of a run: what it is, the run's [`RunInfo`], and its content.
#[derive(Serialize)]
struct Record<'a, T: Serialize> {
    kind: &'static str,
    #[serde(flatten)]
    info: &'a RunInfo,
    #[serde(flatten)]
    body: T,
}

/// The order of the sides in `round`: side 0 is mim, side k > 0 the k-th peer; the first side
/// rotates from round to round, so that no side always runs right after another.
pub fn round_order(round: usize, sides: usize) -> Vec<usize> {
    (0..sides).map(|k| (round + k) % sides).collect()
}

/// Runs the benchmark on `device`: per workload variant, mim's side and each peer built and
/// warmed up, then `opts.rounds` alternating rounds of training steps, then of inference calls.
/// Each variant's row is appended to `opts.out` as it completes; progress lines go to `progress`.
pub fn run(opts: &BenchOptions, device: &Device, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let chosen = find_workloads(&opts.workloads)?;
    for n in opts.no_mask_variant.iter().filter(|n| !n.is_empty()) {
        let mae: Vec<&str> = workloads().into_iter().filter(Workload::is_mae).map(|w| w.name).collect();
        ensure!(
            mae.contains(&n.as_str()),
            "--no-mask-variant {n}: only the MAE workloads ({}) have a mask-ratio-0 variant",
            mae.join(", ")
        );
    }
    ensure!(opts.rounds > 0 && opts.iters > 0, "--rounds and --iters must be at least 1");
    if opts.peer_compile && opts.peer.is_none() {
        bail!("--peer-compile measures a torch.compile peer: pass --peer PYTHON too (see {PEER_README})");
    }
    if let Some(python) = &opts.peer {
        check_peer_script(&opts.peer_script)?;
        check_peer_python(python)?;
    }
    let info = RunInfo::here(opts.command.clone(), opts.seed);
    progress(&format!(
        "mim {} | burn 0.22.1 flex | {} | {} threads | commit {} | warmup {} | {} rounds of {} steps per side",
        info.mim_version, info.cpu, info.threads, info.commit, opts.warmup, opts.rounds, opts.iters
    ));
    let peak_gflops = matmul_gflops(2048, 10, device);
    progress(&format!("fp32 matmul 2048^3: {peak_gflops:.0} GFLOP/s (this machine's practical peak for the % column)"));
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&opts.out)?;
    writeln!(
        log,
        "{}",
        serde_json::to_string(&Record {
            kind: "run",
            info: &info,
            body: serde_json::json!({"matmul_gflops": peak_gflops})
        })?
    )?;
    let mut kinds = vec![PeerKind::Eager];
    if opts.peer_compile {
        kinds.push(PeerKind::Compiled);
    }
    let mut rows = Vec::new();
    for w in &chosen {
        let no_mask = opts.no_mask_variant.iter().any(|n| n == w.name);
        for mask_ratio in w.mask_ratios(no_mask) {
            let row = measure_variant(opts, w, mask_ratio, &kinds, &info, device, progress)?;
            writeln!(log, "{}", serde_json::to_string(&Record { kind: "variant", info: &info, body: &row })?)?;
            rows.push(row);
        }
    }
    Ok(BenchReport { rounds: opts.rounds, iters: opts.iters, peak_gflops, rows })
}

/// Measures one workload variant: mim's side and the peers of `kinds` (when there is a peer).
fn measure_variant(
    opts: &BenchOptions,
    w: &Workload,
    mask_ratio: Option<f64>,
    kinds: &[PeerKind],
    info: &RunInfo,
    device: &Device,
    progress: &mut dyn FnMut(&str),
) -> Result<Row> {
    let label = format!("{}{}", w.name, mask_ratio.map_or(String::new(), |m| format!(" mask {m}")));
    let scratch = tempfile::tempdir()?;
    reset_peak_memory();
    let mut ours = workload::build(w, mask_ratio, opts.seed, &opts.data, scratch.path(), device)?;
    for _ in 0..opts.warmup {
        ours.train()?;
    }
    let has_infer = ours.infer()?;
    for _ in 1..opts.warmup {
        ours.infer()?;
    }
    let flops = w.flops(mask_ratio);
    let mut peers = Vec::new();
    if let Some(python) = &opts.peer {
        for &kind in kinds {
            progress(&format!("{label}: starting the {} peer (build + {} warm-up steps)", kind.label(), opts.warmup));
            let p = Peer::spawn(&PeerSpec {
                python,
                script: &opts.peer_script,
                workload: w.name,
                mask_ratio: mask_ratio.filter(|_| w.is_mae()),
                kind,
                threads: info.threads,
                warmup: opts.warmup,
                seed: opts.seed,
                batch: w.batch,
                data: matches!(w.task, Task::Folder { .. }).then(|| scratch.path()),
            })?;
            ensure!(
                p.ready.flops == flops && p.ready.images == ours.images(),
                "the peer's {label} is not mim's: it counts {:?} FLOPs per image over {} images a step, mim {:?} over {}; \
                 bring tools/peer/peer_torch.py's config in line with mim's preset",
                p.ready.flops,
                p.ready.images,
                flops,
                ours.images()
            );
            if p.ready.params != ours.params() {
                progress(&format!(
                    "{label}: note: mim trains {} parameters, the {} peer {} (same FLOPs; see tools/peer/README.md)",
                    ours.params(),
                    kind.label(),
                    p.ready.params
                ));
            }
            peers.push(p);
        }
    }
    let mut mim = Timings::default();
    let mut theirs: Vec<Timings> = peers.iter().map(|_| Timings::default()).collect();
    for phase in ["train", "infer"] {
        if phase == "infer" && !has_infer {
            break;
        }
        for round in 0..opts.rounds {
            for side in round_order(round, 1 + peers.len()) {
                let times = match side {
                    0 if phase == "train" => timed(opts.iters, || ours.train())?,
                    0 => timed(opts.iters, || ours.infer().map(|_| ()))?,
                    k => peers[k - 1].times(phase, opts.iters)?,
                };
                let t = if side == 0 { &mut mim } else { &mut theirs[side - 1] };
                if phase == "train" { &mut t.train } else { &mut t.infer }.push(times);
            }
        }
        let rate = |rounds: &[Vec<f64>]| report::throughput(ours.images(), rounds).unwrap_or(0.0);
        let pick = |t: &Timings| if phase == "train" { t.train.clone() } else { t.infer.clone() };
        let mut line = format!("{label} {phase}: mim {:.1} img/s", rate(&pick(&mim)));
        for (p, t) in peers.iter().zip(&theirs) {
            let ratios = report::round_ratios(&pick(&mim), &pick(t));
            let q = quartiles(&ratios);
            line += &format!(
                ", {} {:.1} img/s, mim/torch {:.2}x [{:.2}-{:.2}]",
                p.kind.label(),
                rate(&pick(t)),
                q.median,
                q.q1,
                q.q3
            );
        }
        progress(&line);
    }
    mim.peak_mib = peak_memory_mib();
    let (params, images) = (ours.params(), ours.images());
    drop(ours);
    let mut peer_rows = Vec::new();
    for (p, mut timings) in peers.into_iter().zip(theirs) {
        let (kind, env) = (p.kind, p.ready.env.clone());
        timings.peak_mib = p.quit()?;
        peer_rows.push(PeerTimings { kind, timings, env });
    }
    Ok(Row { workload: w.name.to_string(), mask_ratio, batch: w.batch, images, flops, params, mim, peers: peer_rows })
}

/// Resets the process's peak resident memory (Linux `clear_refs`); a no-op elsewhere.
pub fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process since the last reset, in MiB (Linux; 0 elsewhere).
pub fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One row of MAE Table 2 measured on this machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeedupRow {
    /// Model preset.
    pub model: String,
    /// Whether removed patches entered the encoder as mask tokens.
    pub encoder_mask_token: bool,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Images per step.
    pub batch: usize,
    /// Median training step (forward + backward + AdamW), seconds.
    pub step_s: f64,
    /// Every timed step, seconds.
    pub step_times: Vec<f64>,
    /// Speed-up over the "encoder w/ [M]" row of the same model (1 for that row).
    pub speedup: f64,
    /// The paper's speed-up for this row (ViT-L and ViT-H only).
    pub paper: Option<f64>,
}

/// MAE Table 2 for one model: the training step at mask ratio 0.75 with the mask token in the
/// encoder (the baseline), then without it with the preset's decoder and with a 1-block decoder.
pub fn table2(
    name: &str,
    model: &MaeConfig,
    batch: usize,
    warmup: usize,
    iters: usize,
    device: &Device,
) -> Result<Vec<SpeedupRow>> {
    // The paper's speed-ups (Table 2, decoder depth 8 and 1; no ViT-B row).
    let paper = |depth: usize| match (model.embed_dim, depth) {
        (1024, 8) => Some(2.8),
        (1024, 1) => Some(3.7),
        (1280, 8) => Some(3.5),
        (1280, 1) => Some(4.1),
        _ => None,
    };
    let variants = [(true, model.decoder_depth), (false, model.decoder_depth), (false, 1)];
    let mut rows: Vec<SpeedupRow> = Vec::new();
    for (encoder_mask_token, decoder_depth) in variants {
        // Training steps only: the throughput benchmark's encoder-inference timing is not needed here.
        let cfg = MaeConfig { encoder_mask_token, decoder_depth, ..model.clone() };
        let mut steps = workload::mae_steps(&cfg, batch, 0.75, 0, device)?;
        let (step_s, step_times) = time_runs(warmup, iters, || steps.train())?;
        let base = rows.first().map_or(step_s, |b| b.step_s);
        rows.push(SpeedupRow {
            model: name.to_string(),
            encoder_mask_token,
            decoder_depth,
            batch,
            step_s,
            step_times,
            speedup: base / step_s,
            paper: if encoder_mask_token { None } else { paper(decoder_depth) },
        });
    }
    Ok(rows)
}

/// fp32 `n x n x n` matmul GFLOP/s on `device` (median of `iters`): the machine's practical peak.
pub fn matmul_gflops(n: usize, iters: usize, device: &Device) -> f64 {
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let (t, _) = time_runs(2, iters, || {
        let _ = a.clone().matmul(b.clone()).into_data();
        Ok(())
    })
    .expect("a matmul does not fail");
    2.0 * (n as f64).powi(3) / t / 1e9
}

/// Data pipeline alone (decode + MAE augmentation + batching, one worker thread): images/s.
pub fn data_pipeline_img_s(data: &Path, size: usize, batch: usize, batches: usize) -> Result<f64> {
    let ds = Dataset::open(data, Split::Train)?;
    let t = Transform::mae_pretrain(size);
    let idx: Vec<usize> = (0..batch * batches).map(|i| i % ds.len()).collect();
    let start = Instant::now();
    for chunk in idx.chunks(batch) {
        load_batch(&ds, &t, chunk, 0, 0)?;
    }
    Ok(idx.len() as f64 / start.elapsed().as_secs_f64())
}

impl BenchReport {
    /// Measures the IDX data pipeline on `data` when fmnist-tiny was benchmarked and compares it
    /// with that training step's appetite: the summary's last line (after the report's `Display`).
    pub fn data_pipeline_line(&self, data: &Path) -> Result<Option<String>> {
        let Some(step) = self.rows.iter().find(|r| r.mask_ratio == Some(0.75) && r.workload == "fmnist-tiny") else {
            return Ok(None);
        };
        let Some(appetite) = report::throughput(step.images, &step.mim.train) else { return Ok(None) };
        let pipe = data_pipeline_img_s(data, 28, 256, 8)?;
        Ok(Some(format!(
            "\ndata pipeline alone (IDX decode + random resized crop + flip + batch, 1 thread): {pipe:.0} img/s, {:.1}x the fmnist-tiny step's appetite of {appetite:.0} img/s",
            pipe / appetite
        )))
    }
}

/// What `mim bench speedup` measures: MAE Table 2 for some presets.
#[derive(Debug, Clone)]
pub struct SpeedupOptions {
    /// MAE presets.
    pub models: Vec<String>,
    /// Images per step, one per model; empty for the defaults (256 below 768 wide, 8 for ViT-B,
    /// 4 for ViT-L/H).
    pub batch: Vec<usize>,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps (the median is reported).
    pub iters: usize,
    /// JSON-lines file every row is appended to.
    pub out: PathBuf,
}

impl SpeedupOptions {
    /// The models with their batch sizes, or an error when `batch` does not give one per model.
    fn resolve(&self) -> Result<Vec<(&str, MaeConfig, usize)>> {
        ensure!(
            self.batch.is_empty() || self.batch.len() == self.models.len(),
            "--batch has {} values for {} models: give one per model, or none for the defaults",
            self.batch.len(),
            self.models.len()
        );
        let default_batch = |cfg: &MaeConfig| match cfg.embed_dim {
            d if d >= 1024 => 4,
            d if d >= 768 => 8,
            _ => 256,
        };
        let mut models = Vec::new();
        for (i, name) in self.models.iter().enumerate() {
            let cfg = MaeConfig::preset(name)?;
            let batch = self.batch.get(i).copied().unwrap_or_else(|| default_batch(&cfg));
            models.push((name.as_str(), cfg, batch));
        }
        Ok(models)
    }
}

/// Measures MAE Table 2 ([`table2`]) for every model of `opts` on `device`, appending each row to
/// `opts.out`. The Markdown table goes to `table` line by line as rows come; notes to `progress`.
pub fn speedup(
    opts: &SpeedupOptions,
    device: &Device,
    progress: &mut dyn FnMut(&str),
    table: &mut dyn FnMut(&str),
) -> Result<Vec<SpeedupRow>> {
    let models = opts.resolve()?;
    progress(&format!(
        "MAE Table 2 on this machine: mask ratio 0.75, warmup {}, median of {} steps",
        opts.warmup, opts.iters
    ));
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&opts.out)?;
    table("| model | encoder | decoder depth | batch | step (s) | speed-up | paper |\n|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (name, cfg, batch) in models {
        for r in table2(name, &cfg, batch, opts.warmup, opts.iters, device)? {
            table(&r.to_string());
            writeln!(log, "{}", serde_json::to_string(&r)?)?;
            rows.push(r);
        }
    }
    progress("(paper Table 2: ViT-L 2.8x with the 8-block decoder, 3.7x with 1 block; ViT-H 3.5x / 4.1x)");
    Ok(rows)
}

impl fmt::Display for SpeedupRow {
    /// One row of [`speedup`]'s Markdown table.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "| {} | {} | {} | {} | {:.3} | {} | {} |",
            self.model,
            if self.encoder_mask_token { "w/ [M]" } else { "w/o [M]" },
            self.decoder_depth,
            self.batch,
            self.step_s,
            if self.encoder_mask_token { "-".to_string() } else { format!("{:.2}x", self.speedup) },
            self.paper.map_or("-".to_string(), |p| format!("{p}x")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_take_turns_going_first() {
        assert_eq!(round_order(0, 2), vec![0, 1]);
        assert_eq!(round_order(1, 2), vec![1, 0]);
        assert_eq!(round_order(4, 3), vec![1, 2, 0]);
        assert_eq!(round_order(7, 1), vec![0]);
    }

    #[test]
    fn run_info_names_the_machine_and_the_commit() {
        let info = RunInfo::here("mim bench".into(), 3);
        assert!(!info.cpu.is_empty() && !info.commit.is_empty() && info.threads >= 1, "{info:?}");
        let row = serde_json::to_value(Record { kind: "run", info: &info, body: serde_json::json!({"x": 1}) }).unwrap();
        assert_eq!((row["kind"].as_str(), row["seed"].as_u64(), row["x"].as_u64()), (Some("run"), Some(3), Some(1)));
    }
}
