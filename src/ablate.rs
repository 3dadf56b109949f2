//! The MAE paper's ablations (Table 1, figure 5) as runnable studies: each setting of a study is
//! pretrained, then judged by a linear probe on frozen features and a short fine-tuning, and the
//! table is printed beside the paper's ViT-L numbers. Every finished setting is appended to
//! `results.jsonl`, so a sweep that stops resumes where it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::augment::Augmentation;
use crate::data::{Dataset, Split};
use crate::eval::linprobe::{LinprobeConfig, linear_probe};
use crate::eval::{Backbone, extract};
use crate::masking::{BlockMasking, MaskStrategy};
use crate::models::classifier::Pool;
use crate::models::pretrain::ModelConfig;
use crate::results::{Pretraining, Record};
use crate::train::RunConfig;
use crate::train::finetune::{FinetuneConfig, finetune, read_results, results_path};
use crate::train::pretrain::{PretrainConfig, Target, pretrain};
use crate::train::trainer::{Reporter, Silent};

/// A study of MAE Table 1 / figure 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Study {
    /// Figure 5: mask ratio 0.1 ... 0.9.
    MaskRatio,
    /// Table 1a: decoder depth.
    DecoderDepth,
    /// Table 1b: decoder width.
    DecoderWidth,
    /// Table 1c: mask token in the encoder or not (accuracy, encoder FLOPs, wall-clock).
    MaskToken,
    /// Table 1d: reconstruction target (pixels with / without per-patch normalisation, PCA
    /// coefficients, and the tokenizer's ids when `--tokenizer` is given).
    Target,
    /// Table 1e: data augmentation.
    Augmentation,
    /// Table 1f: mask sampling (random, block, grid).
    MaskSampling,
}

/// One setting of a study.
#[derive(Debug, Clone)]
pub struct Setting {
    /// Row label.
    pub label: String,
    /// The pretraining of this setting.
    pub pretrain: PretrainConfig,
    /// The paper's ViT-L (fine-tune, linear) accuracy for this setting, when it reports one.
    pub paper: Option<(f64, f64)>,
}

/// A finished setting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Row label.
    pub label: String,
    /// Fine-tuning test top-1 (percent, best epoch).
    pub finetune: f64,
    /// Linear-probe test top-1 (percent).
    pub linear: f64,
    /// Final pretraining loss (mean of the last 20 iterations).
    pub pretrain_loss: f64,
    /// Wall-clock seconds of pretraining, probing and fine-tuning.
    pub seconds: f64,
    /// Wall-clock seconds of the pretraining alone.
    #[serde(default)]
    pub pretrain_seconds: f64,
    /// Median wall-clock seconds of one pretraining step (forward, backward, update).
    #[serde(default)]
    pub step_seconds: f64,
    /// Encoder forward GFLOPs per image (matmuls, as `mim bench` counts them; 0 where not counted).
    #[serde(default)]
    pub encoder_gflops: f64,
}

/// Budgets of a sweep.
#[derive(Debug, Clone)]
pub struct AblateConfig {
    /// Which study.
    pub study: Study,
    /// Pretraining every setting starts from (the study changes one field).
    pub base: PretrainConfig,
    /// Fine-tuning after pretraining (its `checkpoint`, `data` and `out` are set per setting).
    pub finetune: FinetuneConfig,
    /// Linear probe on frozen cls-token features.
    pub probe: LinprobeConfig,
    /// Training images for the probe's features (the test split is used whole).
    pub probe_images: Option<usize>,
    /// Fewer settings (e.g. mask ratios 0.25, 0.5, 0.75, 0.9).
    pub quick: bool,
    /// Output folder: one sub-folder per setting, `results.jsonl`, `table.md`, `plot.png`.
    pub out: PathBuf,
    /// Also append each finished setting's linear probe and fine-tuning as [`Record`]s of the study
    /// named `.1` to the JSON-lines file `.0`, for `mim results` (e.g. the docs' tables and plots).
    pub record: Option<(PathBuf, String)>,
}

impl Study {
    /// The settings of the study on top of `base`.
    pub fn settings(self, base: &PretrainConfig, quick: bool) -> Vec<Setting> {
        let with = |label: String, f: &dyn Fn(&mut PretrainConfig), paper: Option<(f64, f64)>| {
            let mut p = base.clone();
            f(&mut p);
            // Only a token target uses the tokenizer given for the target study.
            if p.target != Target::Tokens {
                p.tokenizer = None;
            }
            p.run.out = base.run.out.join(label.replace([' ', '%', '/'], "_"));
            Setting { label, pretrain: p, paper }
        };
        match self {
            Study::MaskRatio => {
                let ratios: &[f64] =
                    if quick { &[0.25, 0.5, 0.75, 0.9] } else { &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9] };
                ratios
                    .iter()
                    .map(|&r| {
                        with(format!("ratio {r}"), &|p| p.mask_ratio = Some(r), (r == 0.75).then_some((84.9, 73.5)))
                    })
                    .collect()
            }
            Study::DecoderDepth => {
                let paper = [(1, 84.8, 65.5), (2, 84.9, 70.0), (4, 84.9, 71.9), (8, 85.1, 73.5)];
                let depths: &[usize] = if quick { &[1, 2, 4] } else { &[1, 2, 4, 8] };
                depths
                    .iter()
                    .map(|&d| {
                        let pp = paper.iter().find(|x| x.0 == d).map(|x| (x.1, x.2));
                        with(format!("depth {d}"), &|p| p.decoder_depth = Some(d), pp)
                    })
                    .collect()
            }
            Study::DecoderWidth => {
                // The paper's 128 ... 1024 for a 1024-wide encoder; here scaled to the preset.
                let widths: &[usize] = if quick { &[32, 64, 128] } else { &[32, 64, 128, 192, 256] };
                widths.iter().map(|&w| with(format!("width {w}"), &|p| p.decoder_embed_dim = Some(w), None)).collect()
            }
            Study::MaskToken => vec![
                with("encoder w/ [M]".into(), &|p| p.encoder_mask_token = true, Some((84.2, 59.6))),
                with("encoder w/o [M]".into(), &|p| p.encoder_mask_token = false, Some((84.9, 73.5))),
            ],
            Study::Target => {
                let mut rows = vec![
                    with("pixel (w/o norm)".into(), &|p| p.norm_pix_loss = false, Some((84.9, 73.5))),
                    with("pixel (w/ norm)".into(), &|p| p.norm_pix_loss = true, Some((85.4, 73.9))),
                    with("PCA".into(), &|p| p.target = Target::Pca, Some((84.6, 72.3))),
                ];
                if base.tokenizer.is_some() {
                    rows.push(with("dVAE token".into(), &|p| p.target = Target::Tokens, Some((85.3, 68.8))));
                }
                rows
            }
            Study::Augmentation => vec![
                with("none".into(), &|p| p.augmentation = Some(Augmentation::None), Some((84.0, 65.7))),
                with(
                    "crop, fixed size".into(),
                    &|p| p.augmentation = Some(Augmentation::FixedCrop),
                    Some((84.7, 73.1)),
                ),
                with(
                    "crop, rand size".into(),
                    &|p| p.augmentation = Some(Augmentation::RandomResizedCrop),
                    Some((84.9, 73.5)),
                ),
                with(
                    "crop + color jit".into(),
                    &|p| p.augmentation = Some(Augmentation::RandomResizedCropColorJitter),
                    Some((84.3, 71.9)),
                ),
            ],
            Study::MaskSampling => {
                // Block counts from the model's own patch grid (the default preset's when unset).
                let l = base.model_config(1).map_or(49, |m| m.num_patches()) as f64;
                vec![
                    with("random 75%".into(), &|p| p.mask_ratio = Some(0.75), Some((84.9, 73.5))),
                    with(
                        "block 50%".into(),
                        &|p| {
                            p.mask_ratio = Some(0.5);
                            p.mask = Some(MaskStrategy::Block(BlockMasking::beit((0.5 * l) as usize)));
                        },
                        Some((83.9, 72.3)),
                    ),
                    with(
                        "block 75%".into(),
                        &|p| {
                            p.mask_ratio = Some(0.75);
                            p.mask = Some(MaskStrategy::Block(BlockMasking::beit((0.75 * l) as usize)));
                        },
                        Some((82.8, 63.9)),
                    ),
                    with(
                        "grid 75%".into(),
                        &|p| {
                            p.mask_ratio = Some(0.75);
                            p.mask = Some(MaskStrategy::Grid);
                        },
                        Some((84.0, 66.0)),
                    ),
                ]
            }
        }
    }
}

fn read_rows(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    crate::io::read_jsonl(path, "ablation results")
}

/// Runs (or resumes) a study and writes its table and plot; returns the rows in setting order.
pub fn run_study(cfg: &AblateConfig, reporter: &mut dyn Reporter) -> Result<Vec<Row>> {
    // The study folder (results.jsonl, table, plot) is locked like a run folder; each setting's
    // pretraining and fine-tuning lock their own sub-folders.
    let _lock = crate::train::lock::lock_run_dir(&cfg.out)?;
    let mut base = cfg.base.clone();
    base.run.out = cfg.out.clone();
    let settings = cfg.study.settings(&base, cfg.quick);
    let results = cfg.out.join("results.jsonl");
    let mut rows = read_rows(&results)?;
    for s in &settings {
        if rows.iter().any(|r| r.label == s.label) {
            reporter.message(&format!("{}: done earlier, skipped", s.label));
            continue;
        }
        reporter.message(&format!("{}: pretraining", s.label));
        let t0 = Instant::now();
        let ckpt = crate::train::pretrain::checkpoint_path(&s.pretrain.run.out);
        // A setting interrupted mid-pretraining continues its own run.
        let resume = ckpt.exists().then_some(ckpt.as_path());
        let summary = pretrain(&s.pretrain, resume, &mut Silent)?;
        let pretrain_seconds = t0.elapsed().as_secs_f64();
        let mut steps: Vec<f64> = summary.steps.windows(2).map(|w| w[1].elapsed_s - w[0].elapsed_s).collect();
        steps.sort_by(f64::total_cmp);
        let step_seconds = steps.get(steps.len() / 2).copied().unwrap_or(0.0);
        let tail: Vec<f64> = summary.steps.iter().rev().take(20).map(|m| m.loss).collect();
        let pretrain_loss = tail.iter().sum::<f64>() / tail.len().max(1) as f64;

        let device = crate::runtime::device(&s.pretrain.run.device)?;
        let mut train = Dataset::open(&s.pretrain.run.data, Split::Train)?;
        if let Some(n) = cfg.probe_images {
            train.truncate(n);
        }
        let test = Dataset::open(&s.pretrain.run.data, Split::Test)?;
        train.check_test_split(&test)?;
        let e = Backbone::Checkpoint(summary.checkpoint.clone())
            .encoder(train.channels, Pool::Cls, &device)?
            .expect("an encoder");
        let side = e.config.img_size();
        let t_probe = crate::runtime::Stopwatch::start();
        let f_train = extract(Some(e.encode.as_ref()), &train, side, 256, &device, &mut |_| {})?;
        let f_test = extract(Some(e.encode.as_ref()), &test, side, 256, &device, &mut |_| {})?;
        let probe = linear_probe(&f_train, &f_test, train.classes.len(), &cfg.probe, &device, &mut |_| {})?;
        let linear = probe.last().map_or(0.0, |e| e.top1);
        let (probe_seconds, probe_core_seconds) = (t_probe.wall_s(), t_probe.cpu_s());

        reporter.message(&format!("{}: fine-tuning", s.label));
        let ft_out = s.pretrain.run.out.join("finetune");
        let run = RunConfig { data: s.pretrain.run.data.clone(), out: ft_out.clone(), ..cfg.finetune.run.clone() };
        let ft = FinetuneConfig { checkpoint: Some(summary.checkpoint.clone()), run, ..cfg.finetune.clone() };
        let ft_resume = crate::train::finetune::last_checkpoint(&ft_out);
        // A fine-tuning that was never started has no results file yet; one that was is resumed.
        let mut epochs = if ft_resume.exists() { read_results(&results_path(&ft_out))? } else { Vec::new() };
        if epochs.last().is_none_or(|r| r.epoch < ft.run.epochs as u64) {
            finetune(&ft, ft_resume.exists().then_some(ft_resume.as_path()), &mut Silent)?;
            epochs = read_results(&results_path(&ft_out))?;
        }
        let finetune_top1 = epochs.iter().map(|r| r.top1).fold(0.0, f64::max);
        let row = Row {
            label: s.label.clone(),
            finetune: finetune_top1,
            linear,
            pretrain_loss,
            seconds: t0.elapsed().as_secs_f64(),
            pretrain_seconds,
            step_seconds,
            encoder_gflops: encoder_gflops(&s.pretrain, &e.config),
        };
        reporter.message(&format!(
            "{}: fine-tune {:.2}%, linear {:.2}% ({:.0} s)",
            row.label, row.finetune, row.linear, row.seconds
        ));
        if let Some((path, study)) = &cfg.record {
            let pretraining = Pretraining::of_checkpoint(&summary.checkpoint)?;
            let setting = match &pretraining {
                Some(p) => format!("{}: {}", s.label, p.describe()),
                None => s.label.clone(),
            };
            let probed = probe.last().context("the linear probe ran no epoch")?;
            let tuned = epochs.last().context("the fine-tuning recorded no epoch")?;
            let ft_images =
                Dataset::open(&ft.run.data, Split::Train)?.len().min(ft.run.max_images.unwrap_or(usize::MAX));
            let ft_seconds = crate::train::trainer::training_seconds(epochs.iter().map(|e| e.elapsed_s));
            let ft_readings = epochs.iter().map(|e| (e.elapsed_s, e.cpu_s));
            let ft_core_seconds =
                Some(crate::train::trainer::training_core_seconds(ft_readings, crate::runtime::threads()));
            // (protocol, seed, last top-1 and top-5, epochs, training images, wall and CPU seconds)
            let runs = [
                (
                    "linprobe",
                    s.pretrain.run.seed,
                    (probed.top1, probed.top5),
                    cfg.probe.epochs as f64,
                    train.len(),
                    (probe_seconds, probe_core_seconds),
                ),
                (
                    "finetune",
                    ft.run.seed,
                    (tuned.top1, tuned.top5),
                    tuned.epoch as f64,
                    ft_images,
                    (ft_seconds, ft_core_seconds),
                ),
            ];
            for (protocol, seed, (top1, top5), epochs, train_images, (seconds, core_seconds)) in runs {
                let here = Record::here(protocol, setting.clone(), seed, pretraining.clone());
                let record =
                    Record { study: study.clone(), top1, top5, epochs, train_images, seconds, core_seconds, ..here };
                crate::results::append(path, &record)?;
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results)
            .with_context(|| format!("cannot write '{}'", results.display()))?;
        writeln!(f, "{}", serde_json::to_string(&row)?)
            .with_context(|| format!("cannot write '{}'", results.display()))?;
        rows.push(row);
    }
    let ordered: Vec<Row> = settings.iter().filter_map(|s| rows.iter().find(|r| r.label == s.label).cloned()).collect();
    std::fs::write(cfg.out.join("table.md"), table(cfg.study, &settings, &ordered))?;
    let series = |f: fn(&Row) -> f64| ordered.iter().enumerate().map(|(i, r)| (i as f64, f(r))).collect::<Vec<_>>();
    crate::viz::line_chart(
        &cfg.out.join("plot.png"),
        &format!("{:?}: {}", cfg.study, ordered.iter().map(|r| r.label.as_str()).collect::<Vec<_>>().join(" | ")),
        "setting (in table order)",
        "test top-1 (%)",
        &[("fine-tune", series(|r| r.finetune)), ("linear probe", series(|r| r.linear))],
    )?;
    Ok(ordered)
}

/// Encoder forward GFLOPs per image of an MAE setting (0 for other methods): the encoder runs on
/// the kept patches, or on all of them with the mask token in the encoder.
fn encoder_gflops(p: &PretrainConfig, model: &ModelConfig) -> f64 {
    let ModelConfig::Mae(m) = model else { return 0.0 };
    let l = m.num_patches();
    let tokens = if m.encoder_mask_token { l } else { crate::masking::len_keep(l, p.ratio()) };
    crate::bench::analytic_flops(m, tokens).encoder / 1e9
}

/// The markdown table of a study: our numbers beside the paper's ViT-L numbers (MAE Table 1).
pub fn table(study: Study, settings: &[Setting], rows: &[Row]) -> String {
    let mut t = format!(
        "### {study:?}\n\n| setting | fine-tune top-1 (ours) | linear top-1 (ours) | pretrain loss | encoder GFLOPs/img | s/step | pretrain time (s) | total time (s) | paper ViT-L fine-tune | paper ViT-L linear |\n|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let paper = settings.iter().find(|s| s.label == r.label).and_then(|s| s.paper);
        let (pf, pl) = paper.map_or(("-".to_string(), "-".to_string()), |(f, l)| (format!("{f}"), format!("{l}")));
        // Rows written before a column existed show "-".
        let known = |v: f64, digits: usize| if v > 0.0 { format!("{v:.digits$}") } else { "-".into() };
        let (gflops, step) = (known(r.encoder_gflops, 3), known(r.step_seconds, 3));
        t += &format!(
            "| {} | {:.2} | {:.2} | {:.4} | {gflops} | {step} | {:.0} | {:.0} | {pf} | {pl} |\n",
            r.label, r.finetune, r.linear, r.pretrain_loss, r.pretrain_seconds, r.seconds
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_of_a_study_differ_and_write_to_their_own_folders() {
        let base = PretrainConfig::default();
        for study in [
            Study::MaskRatio,
            Study::DecoderDepth,
            Study::DecoderWidth,
            Study::MaskToken,
            Study::Target,
            Study::Augmentation,
            Study::MaskSampling,
        ] {
            for quick in [true, false] {
                let s = study.settings(&base, quick);
                assert!(s.len() >= 2, "{study:?}");
                let mut outs: Vec<_> = s.iter().map(|x| x.pretrain.run.out.clone()).collect();
                outs.sort();
                outs.dedup();
                assert_eq!(outs.len(), s.len(), "{study:?}: settings share an output folder");
                let without_out = |p: &PretrainConfig| PretrainConfig {
                    run: RunConfig { out: PathBuf::new(), ..p.run.clone() },
                    ..p.clone()
                };
                for (i, a) in s.iter().enumerate() {
                    for b in &s[i + 1..] {
                        assert_ne!(
                            without_out(&a.pretrain),
                            without_out(&b.pretrain),
                            "{study:?}: {} and {} train the same",
                            a.label,
                            b.label
                        );
                    }
                }
            }
        }
    }
}
