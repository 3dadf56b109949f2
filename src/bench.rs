//! Benchmarks (`mim bench`): pretraining step and encoder inference throughput on the PyTorch peer's
//! workloads (../shared/peer), achieved GFLOP/s against this machine's measured matmul peak, peak
//! memory, and the data pipeline's throughput; optionally the peer itself in the same invocation.
//!
//! FLOPs are counted as the peer counts them (matmuls only; LayerNorm, softmax, GELU ignored): per
//! block `2 n (4 d^2 + 2 d m) + 4 n^2 d` for `n` tokens of width `d` and MLP width `m`; patch embedding
//! `2 k (p^2 C) d` for `k` kept patches; decoder embedding `2 (k + 1) d d'`; prediction `2 (L + 1) d' p^2 C`.
//! A training step is 3x the forward pass. These are the model's FLOPs as the official code
//! computes it: mim's training step skips part of them (the last decoder block's MLP, the norm
//! and the head on visible patches, whose predictions the loss never reads; 3.1% of fmnist-tiny's
//! step), so its training GFLOP/s is the rate of the model's work, not of the arithmetic executed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
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
    let base = MaeConfig { norm_pix_loss: false, ..MaeConfig::preset("mae_vit_base_patch16").unwrap() };
    vec![
        Workload { name: "fmnist-tiny", model: MaeConfig::preset("mae_tiny_28").unwrap(), batch: 256 },
        Workload { name: "vit-tiny-32", model: MaeConfig::preset("mae_tiny_32").unwrap(), batch: 128 },
        Workload { name: "vit-base-224", model: base, batch: 8 },
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
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
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
pub fn bench_workload(w: &Workload, mask_ratio: f64, warmup: usize, iters: usize, device: &Device) -> Result<BenchResult> {
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
fn time_training(cfg: &MaeConfig, b: usize, mask: &Mask, warmup: usize, iters: usize, device: &Device) -> Result<(Tensor<4>, MaskedAutoencoder, f64, Vec<f64>)> {
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
pub fn table2(name: &str, model: &MaeConfig, batch: usize, warmup: usize, iters: usize, device: &Device) -> Result<Vec<SpeedupRow>> {
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
        let (_, _, step_s, step_times) = time_training(&cfg, batch, &bench_mask(&cfg, batch, 0.75)?, warmup, iters, device)?;
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
pub fn run_peer(python: &Path, script: &Path, config: &str, threads: usize, iters: usize, no_mask: bool) -> Result<(Vec<PeerResult>, Option<f64>)> {
    check_peer_script(script)?;
    let out = std::env::temp_dir().join(format!("mim-peer-{}-{config}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--configs", config, "--threads", &threads.to_string(), "--skip-matmul", "--iters", &iters.to_string()])
        .args(["--iters-big", &iters.to_string(), "--no-mask-variant", if no_mask { config } else { "" }, "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null());
    let child = cmd.spawn().with_context(|| format!("cannot run the peer with '{}': is it the venv's python?", python.display()))?;
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
    fn flop_counts_match_the_peers_formula() {
        // Values printed by peer_torch.analytic_flops for the same configs at mask 0.75.
        let w = workloads();
        let tiny = analytic_flops(&w[0].model, 12);
        assert_eq!((tiny.forward, tiny.encoder), (112_587_264.0, 69_861_888.0));
        let base = analytic_flops(&w[2].model, 49);
        assert_eq!((base.forward, base.encoder), (19_388_858_368.0, 8_643_428_352.0));
    }
}
