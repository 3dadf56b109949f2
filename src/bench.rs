//! Benchmarks (`mim bench`): pretraining step and encoder inference throughput on the PyTorch peer's
//! workloads (../shared/peer), achieved GFLOP/s against this machine's measured matmul peak, peak
//! memory, and the data pipeline's throughput; optionally the peer itself in the same invocation.
//! [`run`] measures [`BenchOptions`] into a [`BenchReport`], whose `Display` is the summary table;
//! [`speedup`] measures MAE Table 2 ([`SpeedupOptions`]).
//!
//! FLOPs are counted as the peer counts them (matmuls only; LayerNorm, softmax, GELU ignored): per
//! block `2 n (4 d^2 + 2 d m) + 4 n^2 d` for `n` tokens of width `d` and MLP width `m`; patch embedding
//! `2 k (p^2 C) d` for `k` kept patches; decoder embedding `2 (k + 1) d d'`; prediction `2 (L + 1) d' p^2 C`.
//! A training step is 3x the forward pass. These are the model's FLOPs as the official code
//! computes it: mim's training step skips part of them (the last decoder block's MLP, the norm
//! and the head on visible patches, whose predictions the loss never reads; 3.1% of fmnist-tiny's
//! step), so its training GFLOP/s is the rate of the model's work, not of the arithmetic executed.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::augment::Transform;
use crate::data::loader::{load_batch, rng_for};
use crate::data::{Dataset, Split};
use crate::masking::{Mask, uniform_noise};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::pretrain::MimModel;
use crate::optim::{MAE_BETAS, adamw};

/// A benchmark workload: a model and a batch size (named as the peer's configs).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Peer config name.
    pub name: &'static str,
    /// Model.
    pub model: MaeConfig,
    /// Images per step.
    pub batch: usize,
}

/// The peer's workloads: `fmnist-tiny`, `vit-tiny-32`, `vit-base-224` (HF defaults: no norm_pix_loss).
pub fn workloads() -> Vec<Workload> {
    vec![
        Workload { name: "fmnist-tiny", model: MaeConfig::tiny_28(), batch: 256 },
        Workload { name: "vit-tiny-32", model: MaeConfig::tiny_32(), batch: 128 },
        Workload {
            name: "vit-base-224",
            model: MaeConfig { norm_pix_loss: false, ..MaeConfig::vit_base_patch16() },
            batch: 8,
        },
    ]
}

/// Analytic forward FLOPs per image (see the module docs).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Flops {
    /// Encoder + decoder forward.
    pub forward: f64,
    /// Encoder forward only.
    pub encoder: f64,
}

/// FLOPs per image of `cfg` at `mask_ratio`, as the peer's `analytic_flops`.
pub fn analytic_flops(cfg: &MaeConfig, len_keep: usize) -> Flops {
    let block = |n: f64, d: f64, m: f64| 2.0 * n * (4.0 * d * d + 2.0 * d * m) + 4.0 * n * n * d;
    let l = cfg.num_patches() as f64;
    let k = len_keep as f64;
    let (d, dd) = (cfg.embed_dim as f64, cfg.decoder_embed_dim as f64);
    let pp = cfg.patch_dim() as f64;
    let encoder = 2.0 * k * pp * d + cfg.depth as f64 * block(k + 1.0, d, d * cfg.mlp_ratio);
    let forward = encoder
        + 2.0 * (k + 1.0) * d * dd
        + cfg.decoder_depth as f64 * block(l + 1.0, dd, dd * cfg.mlp_ratio)
        + 2.0 * (l + 1.0) * dd * pp;
    Flops { forward, encoder }
}

/// Median and all timings of `iters` runs after `warmup` untimed ones.
pub fn time_runs(warmup: usize, iters: usize, mut f: impl FnMut()) -> (f64, Vec<f64>) {
    for _ in 0..warmup {
        f();
    }
    let mut ts: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let all = ts.clone();
    ts.sort_by(f64::total_cmp);
    (ts[ts.len() / 2], all)
}

/// Median, minimum and maximum of `values` (not empty).
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // The mean of the middle two for an even count: two rounds give their midpoint.
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (median, v[0], v[n - 1])
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

/// One workload's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// Workload name.
    pub config: String,
    /// Mask ratio (0 = encoder sees every token).
    pub mask_ratio: f64,
    /// Images per step.
    pub batch: usize,
    /// Forward + backward + AdamW, images/s (median step).
    pub train_img_s: f64,
    /// Encoder-only forward, no autodiff, images/s.
    pub enc_fwd_img_s: f64,
    /// Achieved training GFLOP/s (3x analytic forward).
    pub train_gflops: f64,
    /// Achieved encoder GFLOP/s.
    pub enc_fwd_gflops: f64,
    /// Peak resident memory of the process, MiB: since the reset before this workload where the
    /// kernel honours `clear_refs`, otherwise since the process started.
    pub peak_mib: f64,
    /// Every timed training step, seconds.
    pub train_times: Vec<f64>,
    /// Round of `mim bench --rounds` (0-based).
    #[serde(default)]
    pub round: usize,
}

/// Measures one workload at `mask_ratio` (0 for the full-encoder variant).
pub fn bench_workload(
    w: &Workload,
    mask_ratio: f64,
    warmup: usize,
    iters: usize,
    device: &Device,
) -> Result<BenchResult> {
    reset_peak_memory();
    let cfg = &w.model;
    let b = w.batch;
    let mask = bench_mask(cfg, b, mask_ratio)?;
    // The "encoder w/ [M]" variant runs its encoder on every patch.
    let flops = analytic_flops(cfg, if cfg.encoder_mask_token { cfg.num_patches() } else { mask.len_keep });
    let (imgs, model, t_train, train_times) = time_training(cfg, b, &mask, warmup, iters, device)?;
    let inference = model.valid();
    let imgs = imgs.inner();
    let (t_enc, _) = time_runs(warmup, iters, || {
        let _ = inference.forward_encoder(imgs.clone(), &mask).into_data();
    });
    Ok(BenchResult {
        config: w.name.to_string(),
        mask_ratio,
        batch: b,
        train_img_s: b as f64 / t_train,
        enc_fwd_img_s: b as f64 / t_enc,
        train_gflops: 3.0 * flops.forward * b as f64 / t_train / 1e9,
        enc_fwd_gflops: flops.encoder * b as f64 / t_enc / 1e9,
        peak_mib: peak_memory_mib(),
        train_times,
        round: 0,
    })
}

/// The fixed mask of a benchmark: `mask_ratio` of the patches removed (0: none).
fn bench_mask(cfg: &MaeConfig, batch: usize, mask_ratio: f64) -> Result<Mask> {
    let l = cfg.num_patches();
    if mask_ratio == 0.0 {
        return Ok(Mask::keep_all(batch, l));
    }
    Mask::from_noise(&uniform_noise(&mut rng_for(&[1]), batch, l), batch, mask_ratio)
}

/// Times training steps (forward + backward + AdamW) of a fresh `cfg` on random images under
/// `mask`: the images, the trained model, the median step and every timed step, seconds.
fn time_training(
    cfg: &MaeConfig,
    b: usize,
    mask: &Mask,
    warmup: usize,
    iters: usize,
    device: &Device,
) -> Result<(Tensor<4>, MaskedAutoencoder, f64, Vec<f64>)> {
    let ad = device.clone().autodiff();
    let fresh = cfg.init(0, &ad)?;
    let mut optim = adamw(&fresh, 0.05, MAE_BETAS, <MaskedAutoencoder as MimModel>::no_weight_decay);
    let mut model = Some(fresh);
    let imgs = Tensor::<4>::random([b, cfg.in_chans, cfg.img_size, cfg.img_size], Distribution::Normal(0.0, 1.0), &ad);
    let (median, times) = time_runs(warmup, iters, || {
        let m = model.take().unwrap();
        let loss = m.forward(imgs.clone(), mask).loss;
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let m = optim.step(1e-4, m, grads);
        let _ = device.sync();
        model = Some(m);
    });
    Ok((imgs, model.take().unwrap(), median, times))
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
        let (_, _, step_s, step_times) =
            time_training(&cfg, batch, &bench_mask(&cfg, batch, 0.75)?, warmup, iters, device)?;
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
    });
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

/// What the PyTorch peer reported for one workload.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerResult {
    /// Workload name.
    pub config: String,
    /// Mask ratio.
    pub mask_ratio: f64,
    /// Training images/s.
    pub train_img_s: f64,
    /// Encoder-only images/s.
    pub enc_fwd_img_s: f64,
    /// Every timed training step, seconds.
    #[serde(default)]
    pub train_times: Vec<f64>,
    /// Peak resident memory of the peer process for this workload, MiB (filled in by mim).
    #[serde(default)]
    pub peak_mib: f64,
    /// Round of `mim bench --rounds` (filled in by mim).
    #[serde(default)]
    pub round: usize,
}

/// An error naming the fix when the peer script is not where `script` says.
pub fn check_peer_script(script: &Path) -> Result<()> {
    if !script.is_file() {
        bail!("peer script '{}' not found: pass --peer-script (see ../shared/peer/README.md)", script.display());
    }
    Ok(())
}

/// Runs `../shared/peer/peer_torch.py` for one config in its own process and returns its results
/// and that process's peak resident memory.
pub fn run_peer(
    python: &Path,
    script: &Path,
    config: &str,
    threads: usize,
    iters: usize,
    no_mask: bool,
) -> Result<(Vec<PeerResult>, Option<f64>)> {
    check_peer_script(script)?;
    let out = std::env::temp_dir().join(format!("mim-peer-{}-{config}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--configs", config, "--threads", &threads.to_string(), "--skip-matmul", "--iters", &iters.to_string()])
        .args(["--iters-big", &iters.to_string(), "--no-mask-variant", if no_mask { config } else { "" }, "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run the peer with '{}': is it the venv's python?", python.display()))?;
    let (ok, peak) = wait_with_peak(child)?;
    if !ok {
        bail!("the PyTorch peer failed on {config}: run it by hand to see why (../shared/peer/README.md)");
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    let rows = text.lines().filter_map(|l| serde_json::from_str::<PeerResult>(l).ok()).collect();
    Ok((rows, peak))
}

/// Waits for a child and returns (success, its peak resident memory in MiB where the OS says).
fn wait_with_peak(child: std::process::Child) -> Result<(bool, Option<f64>)> {
    #[cfg(target_os = "linux")]
    {
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        std::mem::forget(child);
        anyhow::ensure!(r == pid, "waiting for the peer failed");
        Ok((libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, Some(usage.ru_maxrss as f64 / 1024.0)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut child = child;
        Ok((child.wait()?.success(), None))
    }
}

/// What `mim bench` measures: workloads, repetitions, the optional PyTorch peer, and where results go.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Workloads by the peer's config names (see [`workloads`]).
    pub workloads: Vec<String>,
    /// Workloads also measured at mask ratio 0 (the encoder sees every token: the paper's Table 2 cost).
    pub no_mask_variant: Vec<String>,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations (the median is reported).
    pub iters: usize,
    /// Python with torch + transformers, to run the PyTorch peer in the same invocation.
    pub peer: Option<PathBuf>,
    /// The peer script.
    pub peer_script: PathBuf,
    /// Dataset of the data-pipeline measurement.
    pub data: PathBuf,
    /// JSON-lines file every result is appended to.
    pub out: PathBuf,
    /// Repetitions of everything (mim and the peer alternate per workload in each round).
    pub rounds: usize,
}

/// Every measurement of a [`run`]; its `Display` is the summary: medians over rounds, ratios to the
/// peer and the mask-ratio speed-ups.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Rounds measured.
    pub rounds: usize,
    /// Workloads measured, in order.
    pub workloads: Vec<&'static str>,
    /// fp32 matmul GFLOP/s of this machine: the peak the GFLOP/s column is a percentage of.
    pub peak_gflops: f64,
    /// mim's results, every round.
    pub ours: Vec<BenchResult>,
    /// The peer's results, every round (empty without a peer).
    pub peer: Vec<PeerResult>,
}

/// Runs the throughput benchmark on `device`: per round and workload, mim at mask ratio 0.75 (and 0
/// where asked), then the peer when there is one. Each result is appended to `opts.out` as it comes;
/// progress lines go to `progress`.
pub fn run(opts: &BenchOptions, device: &Device, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let all = workloads();
    let chosen: Vec<&Workload> = opts
        .workloads
        .iter()
        .map(|n| {
            all.iter()
                .find(|w| w.name == n)
                .with_context(|| format!("unknown workload '{n}': use fmnist-tiny, vit-tiny-32, vit-base-224"))
        })
        .collect::<Result<_>>()?;
    if opts.peer.is_some() {
        // before any timing, not minutes later at the first workload's turn
        check_peer_script(&opts.peer_script)?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    progress(&format!(
        "mim {} | burn 0.22.1 flex | {threads} threads | warmup {} | median of {}",
        env!("CARGO_PKG_VERSION"),
        opts.warmup,
        opts.iters
    ));
    let peak_gflops = matmul_gflops(2048, 10, device);
    progress(&format!("fp32 matmul 2048^3: {peak_gflops:.0} GFLOP/s (this machine's practical peak for the % column)"));
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&opts.out)?;
    let (mut ours, mut peer) = (Vec::<BenchResult>::new(), Vec::<PeerResult>::new());
    // mim and the peer take turns per workload, so that both see the machine in the same state.
    for round in 0..opts.rounds {
        if opts.rounds > 1 {
            progress(&format!("round {} of {}", round + 1, opts.rounds));
        }
        for w in &chosen {
            let no_mask = opts.no_mask_variant.iter().any(|n| n == w.name);
            for r in if no_mask { vec![0.75, 0.0] } else { vec![0.75] } {
                let res = BenchResult { round, ..bench_workload(w, r, opts.warmup, opts.iters, device)? };
                progress(&format!(
                    "{} mask {r}: train {:.1} img/s, encoder {:.1} img/s, peak {:.0} MiB",
                    w.name, res.train_img_s, res.enc_fwd_img_s, res.peak_mib
                ));
                writeln!(log, "{}", serde_json::to_string(&res)?)?;
                ours.push(res);
            }
            if let Some(py) = &opts.peer {
                let (rows, peak_mib) = run_peer(py, &opts.peer_script, w.name, threads, opts.iters, no_mask)?;
                let rows: Vec<PeerResult> =
                    rows.into_iter().map(|r| PeerResult { peak_mib: peak_mib.unwrap_or(0.0), round, ..r }).collect();
                let summary: Vec<String> = rows
                    .iter()
                    .map(|r| format!("mask {} train {:.1} enc {:.1}", r.mask_ratio, r.train_img_s, r.enc_fwd_img_s))
                    .collect();
                progress(&format!("peer {}: {}", w.name, summary.join(", ")));
                peer.extend(rows);
            }
        }
    }
    Ok(BenchReport { rounds: opts.rounds, workloads: chosen.iter().map(|w| w.name).collect(), peak_gflops, ours, peer })
}

impl BenchReport {
    /// mim's results for `config` at `mask` in every round, each with the peer's of the same round.
    fn rows(&self, config: &str, mask: f64) -> Vec<(&BenchResult, Option<&PeerResult>)> {
        self.ours
            .iter()
            .filter(|r| r.config == config && r.mask_ratio == mask)
            .map(|r| {
                (
                    r,
                    self.peer
                        .iter()
                        .find(|p| p.config == r.config && p.mask_ratio == r.mask_ratio && p.round == r.round),
                )
            })
            .collect()
    }

    /// Measures the data pipeline on `data` when fmnist-tiny was benchmarked and compares it with
    /// that training step's appetite: the summary's last line (after the report's `Display`).
    pub fn data_pipeline_line(&self, data: &Path) -> Result<Option<String>> {
        let Some(step) = self.ours.iter().find(|r| r.mask_ratio == 0.75 && r.config == "fmnist-tiny") else {
            return Ok(None);
        };
        let (pipe, appetite) = (data_pipeline_img_s(data, 28, 256, 8)?, step.train_img_s);
        Ok(Some(format!(
            "\ndata pipeline alone (IDX decode + random resized crop + flip + batch, 1 thread): {pipe:.0} img/s, {:.1}x the fmnist-tiny step's appetite of {appetite:.0} img/s",
            pipe / appetite
        )))
    }

    /// Per round, how many times faster the training step of `workload` is at mask ratio 0.75 than
    /// at 0: mim's and the peer's (empty where either ratio was not measured).
    fn masking_speedups(&self, workload: &str) -> (Vec<f64>, Vec<f64>) {
        let per_round = |img_s: &dyn Fn(f64, usize) -> Option<f64>| -> Vec<f64> {
            (0..self.rounds).filter_map(|round| Some(img_s(0.75, round)? / img_s(0.0, round)?)).collect()
        };
        let ours = per_round(&|m, round| {
            self.ours
                .iter()
                .find(|r| r.config == workload && r.mask_ratio == m && r.round == round)
                .map(|r| r.train_img_s)
        });
        let peer = per_round(&|m, round| {
            self.peer
                .iter()
                .find(|p| p.config == workload && p.mask_ratio == m && p.round == round)
                .map(|p| p.train_img_s)
        });
        (ours, peer)
    }
}

/// A ratio's median over rounds, with its range in brackets when there is more than one round.
fn fmt_spread(ratios: &[f64]) -> String {
    let (m, lo, hi) = spread(ratios);
    if ratios.len() > 1 { format!("{m:.2}x ({lo:.2}-{hi:.2})") } else { format!("{m:.2}x") }
}

impl fmt::Display for BenchReport {
    /// Medians over rounds; ratios are taken within a round, then summarised (median, and the range
    /// when there is more than one round).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let med = |v: Vec<f64>| spread(&v).0;
        let ratio_or_dash = |v: Vec<f64>| if v.is_empty() { "-".to_string() } else { fmt_spread(&v) };
        if self.rounds > 1 {
            writeln!(
                f,
                "\nmedians of {} rounds; each ratio is the median of the per-round ratios (their range in brackets)",
                self.rounds
            )?;
        }
        writeln!(
            f,
            "\n| workload | mask | batch | mim train img/s | torch train img/s | mim/torch | mim/torch, fastest steps | mim encoder img/s | torch encoder img/s | mim/torch | mim train GFLOP/s (% of peak) | mim peak MiB (process so far) | torch peak MiB (process) |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for first in self.ours.iter().filter(|r| r.round == 0) {
            let rows = self.rows(&first.config, first.mask_ratio);
            let mims = |v: fn(&BenchResult) -> f64| med(rows.iter().map(|(r, _)| v(r)).collect());
            let torch = |v: fn(&PeerResult) -> f64| {
                let v: Vec<f64> = rows.iter().filter_map(|(_, p)| p.map(v)).collect();
                (!v.is_empty()).then(|| med(v))
            };
            let ratio = |v: fn(&BenchResult) -> f64, w: fn(&PeerResult) -> f64| {
                ratio_or_dash(rows.iter().filter_map(|(r, p)| p.map(|p| v(r) / w(p))).collect())
            };
            // Each side's fastest step: other tenants of a shared host only ever add time, so this
            // ratio moves less between rounds than the medians' one.
            let fastest = |t: &[f64]| t.iter().copied().fold(f64::INFINITY, f64::min);
            let best = rows.iter().filter_map(|(r, p)| {
                p.filter(|p| !p.train_times.is_empty()).map(|p| fastest(&p.train_times) / fastest(&r.train_times))
            });
            let gflops = mims(|r| r.train_gflops);
            // Where the kernel does not reset the peak per workload, later rounds start from an earlier
            // workload's high-water mark: the smallest reading is the closest to this workload's own.
            writeln!(
                f,
                "| {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} | {} | {:.0} ({:.0}%) | {:.0} | {} |",
                first.config,
                first.mask_ratio,
                first.batch,
                mims(|r| r.train_img_s),
                torch(|p| p.train_img_s).map_or("-".into(), |v| format!("{v:.1}")),
                ratio(|r| r.train_img_s, |p| p.train_img_s),
                ratio_or_dash(best.collect()),
                mims(|r| r.enc_fwd_img_s),
                torch(|p| p.enc_fwd_img_s).map_or("-".into(), |v| format!("{v:.1}")),
                ratio(|r| r.enc_fwd_img_s, |p| p.enc_fwd_img_s),
                gflops,
                100.0 * gflops / self.peak_gflops,
                rows.iter().map(|(r, _)| r.peak_mib).fold(f64::INFINITY, f64::min),
                torch(|p| p.peak_mib).map_or("-".into(), |v| format!("{v:.0}")),
            )?;
        }
        for w in &self.workloads {
            let (ours, peer) = self.masking_speedups(w);
            if !ours.is_empty() {
                let peer = if peer.is_empty() { String::new() } else { format!("; PyTorch {}", fmt_spread(&peer)) };
                let ours = fmt_spread(&ours);
                writeln!(
                    f,
                    "\n{w}: training step with mask 0.75 is {ours} faster than with every token in the encoder (paper Table 2: 2.8-4.1x){peer}"
                )?;
            }
        }
        Ok(())
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
    fn spread_gives_median_and_range() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0]), (2.5, 1.0, 4.0));
        assert_eq!(spread(&[1.5]), (1.5, 1.5, 1.5));
    }

    #[test]
    fn report_takes_medians_over_rounds_and_ratios_within_a_round() {
        let ours = |mask_ratio: f64, round: usize, train_img_s: f64| BenchResult {
            config: "fmnist-tiny".into(),
            mask_ratio,
            batch: 256,
            train_img_s,
            enc_fwd_img_s: 1000.0,
            train_gflops: 50.0,
            enc_fwd_gflops: 0.0,
            peak_mib: 500.0 + round as f64,
            train_times: vec![1.0],
            round,
        };
        let peer = |mask_ratio: f64, round: usize, train_img_s: f64| PeerResult {
            config: "fmnist-tiny".into(),
            mask_ratio,
            train_img_s,
            enc_fwd_img_s: 500.0,
            train_times: vec![2.0],
            peak_mib: 900.0,
            round,
        };
        let report = BenchReport {
            rounds: 2,
            workloads: vec!["fmnist-tiny"],
            peak_gflops: 100.0,
            ours: vec![ours(0.75, 0, 300.0), ours(0.0, 0, 100.0), ours(0.75, 1, 400.0), ours(0.0, 1, 100.0)],
            peer: vec![peer(0.75, 0, 100.0), peer(0.0, 0, 50.0), peer(0.75, 1, 200.0), peer(0.0, 1, 50.0)],
        };
        let text = report.to_string();
        // Train img/s: median 350 against the peer's 150; per-round ratios 3 and 2.
        let row = "| fmnist-tiny | 0.75 | 256 | 350.0 | 150.0 | 2.50x (2.00-3.00) | 2.00x (2.00-2.00) | 1000.0 | 500.0 | 2.00x (2.00-2.00) | 50 (50%) | 500 | 900 |";
        assert!(text.contains(row), "{text}");
        assert!(
            text.contains("mask 0.75 is 3.50x (3.00-4.00) faster") && text.contains("; PyTorch 3.00x (2.00-4.00)"),
            "{text}"
        );
        assert!(text.starts_with("\nmedians of 2 rounds"), "{text}");
    }

    #[test]
    fn flop_counts_match_the_peers_formula() {
        // Values printed by peer_torch.analytic_flops for the same configs at mask 0.75.
        let w = workloads();
        let tiny = analytic_flops(&w[0].model, 12);
        assert_eq!((tiny.forward, tiny.encoder), (112_587_264.0, 69_861_888.0));
        let base = analytic_flops(&w[2].model, 49);
        assert_eq!((base.forward, base.encoder), (19_388_858_368.0, 8_643_428_352.0));
    }
}
