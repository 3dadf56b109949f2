//! What a `mim bench` run measured ([`Row`] per workload variant, raw timings of every round) and
//! its summary table: throughputs from the median step, ratios as the median and interquartile
//! range of the per-round ratios.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::peer::PeerKind;
use super::workload::WorkloadFlops;

/// First quartile, median and third quartile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quartiles {
    /// 25th percentile.
    pub q1: f64,
    /// 50th percentile.
    pub median: f64,
    /// 75th percentile.
    pub q3: f64,
}

/// Quartiles of `values` (not empty), interpolated linearly between order statistics as numpy's
/// default `percentile` (so the median of an even count is the mean of the middle two).
pub fn quartiles(values: &[f64]) -> Quartiles {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    Quartiles { q1: at(0.25), median: at(0.5), q3: at(0.75) }
}

/// Timings of one side of a workload variant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Per round, every timed training step (seconds).
    pub train: Vec<Vec<f64>>,
    /// Per round, every timed inference call (seconds); empty without inference.
    pub infer: Vec<Vec<f64>>,
    /// Peak resident memory of the variant, MiB (mim: since the reset before it, where the
    /// kernel honours `clear_refs`; the peer: its own process).
    pub peak_mib: f64,
}

/// The peer's side of a workload variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerTimings {
    /// Eager or compiled.
    pub kind: PeerKind,
    /// Its timings.
    pub timings: Timings,
    /// Its ready line: versions, threads, BLAS, FLOPs, argv.
    pub env: Value,
}

/// One workload variant: mim's timings and each peer's, measured in alternating rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Workload name.
    pub workload: String,
    /// Mask ratio (none where nothing is masked).
    pub mask_ratio: Option<f64>,
    /// Images per batch.
    pub batch: usize,
    /// Images per timed step (the pipeline: an epoch's).
    pub images: usize,
    /// Analytic forward FLOPs per image (the same on both sides).
    pub flops: WorkloadFlops,
    /// mim's trainable parameters.
    pub params: usize,
    /// mim's timings.
    pub mim: Timings,
    /// Each peer's (none without `--peer`).
    pub peers: Vec<PeerTimings>,
}

/// Per round, how many times faster mim is than `peer` (total time of the round's steps).
pub fn round_ratios(mim: &[Vec<f64>], peer: &[Vec<f64>]) -> Vec<f64> {
    let sum = |t: &Vec<f64>| t.iter().sum::<f64>();
    mim.iter().zip(peer).filter(|(m, p)| !m.is_empty() && !p.is_empty()).map(|(m, p)| sum(p) / sum(m)).collect()
}

/// Per round, the peer's fastest step over mim's: other tenants of a shared host only ever add
/// time, so this moves less between rounds than the totals.
pub fn fastest_ratios(mim: &[Vec<f64>], peer: &[Vec<f64>]) -> Vec<f64> {
    let min = |t: &Vec<f64>| t.iter().copied().fold(f64::INFINITY, f64::min);
    mim.iter().zip(peer).filter(|(m, p)| !m.is_empty() && !p.is_empty()).map(|(m, p)| min(p) / min(m)).collect()
}

/// Images per second at the median of every step of every round (none without steps).
pub fn throughput(images: usize, rounds: &[Vec<f64>]) -> Option<f64> {
    let all: Vec<f64> = rounds.iter().flatten().copied().collect();
    (!all.is_empty()).then(|| images as f64 / quartiles(&all).median)
}

/// A ratio's median with its interquartile range, "-" when there is none.
fn fmt_ratio(ratios: &[f64]) -> String {
    if ratios.is_empty() {
        return "-".into();
    }
    let q = quartiles(ratios);
    if ratios.len() > 1 { format!("{:.2}x [{:.2}-{:.2}]", q.median, q.q1, q.q3) } else { format!("{:.2}x", q.median) }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Every row of a run and what the summary needs besides.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Alternating rounds per variant.
    pub rounds: usize,
    /// Timed steps per side and round.
    pub iters: usize,
    /// fp32 matmul GFLOP/s of this machine: the peak the GFLOP/s column is a percentage of.
    pub peak_gflops: f64,
    /// One per workload variant, in measuring order.
    pub rows: Vec<Row>,
}

impl BenchReport {
    /// Per round, how many times faster the training step of MAE `workload` is at mask ratio 0.75
    /// than at 0, for mim and for the eager peer (empty where either ratio was not measured).
    fn masking_speedups(&self, workload: &str) -> (Vec<f64>, Vec<f64>) {
        let find = |m: f64| self.rows.iter().find(|r| r.workload == workload && r.mask_ratio == Some(m));
        let (Some(masked), Some(full)) = (find(0.75), find(0.0)) else { return (Vec::new(), Vec::new()) };
        let eager = |r: &Row| {
            r.peers.iter().find(|p| p.kind == PeerKind::Eager).map(|p| p.timings.train.clone()).unwrap_or_default()
        };
        (round_ratios(&masked.mim.train, &full.mim.train), round_ratios(&eager(masked), &eager(full)))
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "\n{} alternating rounds of {} steps per side; each ratio is the median of the per-round ratios, interquartile range in brackets",
            self.rounds, self.iters
        )?;
        writeln!(
            f,
            "\n| workload | mask | peer | batch | mim train img/s | torch train img/s | mim/torch | mim/torch, fastest steps | mim inference img/s | torch inference img/s | mim/torch | mim train GFLOP/s (% of peak) | mim peak MiB | torch peak MiB |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for row in &self.rows {
            let mim_train = throughput(row.images, &row.mim.train);
            let gflops = mim_train.zip(row.flops.train_forward).map(|(t, fl)| 3.0 * fl * t / 1e9);
            let gflops = gflops.map_or("-".into(), |g| format!("{g:.0} ({:.0}%)", 100.0 * g / self.peak_gflops));
            let mask = row.mask_ratio.map_or("-".into(), |m| m.to_string());
            let no_peer = [None];
            let peers: Vec<Option<&PeerTimings>> =
                if row.peers.is_empty() { no_peer.to_vec() } else { row.peers.iter().map(Some).collect() };
            for p in peers {
                let t = p.map(|p| &p.timings);
                let ratio = |mim: &[Vec<f64>], pick: fn(&Timings) -> &Vec<Vec<f64>>| {
                    fmt_ratio(&t.map(|t| round_ratios(mim, pick(t))).unwrap_or_default())
                };
                writeln!(
                    f,
                    "| {} | {mask} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {gflops} | {:.0} | {} |",
                    row.workload,
                    p.map_or("-", |p| p.kind.label()),
                    row.batch,
                    fmt_opt(mim_train, 1),
                    fmt_opt(t.and_then(|t| throughput(row.images, &t.train)), 1),
                    ratio(&row.mim.train, |t| &t.train),
                    fmt_ratio(&t.map(|t| fastest_ratios(&row.mim.train, &t.train)).unwrap_or_default()),
                    fmt_opt(throughput(row.images, &row.mim.infer), 1),
                    fmt_opt(t.and_then(|t| throughput(row.images, &t.infer)), 1),
                    ratio(&row.mim.infer, |t| &t.infer),
                    row.mim.peak_mib,
                    fmt_opt(t.map(|t| t.peak_mib), 0),
                )?;
            }
        }
        let mut workloads: Vec<&str> = self.rows.iter().map(|r| r.workload.as_str()).collect();
        workloads.dedup();
        for w in workloads {
            let (ours, peer) = self.masking_speedups(w);
            if !ours.is_empty() {
                let peer = if peer.is_empty() { String::new() } else { format!("; PyTorch {}", fmt_ratio(&peer)) };
                writeln!(
                    f,
                    "\n{w}: training step with mask 0.75 is {} faster than with every token in the encoder (paper Table 2: 2.8-4.1x){peer}",
                    fmt_ratio(&ours)
                )?;
            }
        }
        Ok(())
    }
}

/// One `mim bench` invocation read back from its JSON lines: the `run` row (commit, command line,
/// seed, CPU, AVX-512, threads, matmul peak) and the report of the `variant` rows after it.
#[derive(Debug, Clone)]
pub struct RecordedRun {
    /// The `run` row as written.
    pub info: Value,
    /// Its variants, summarised as the run printed them.
    pub report: BenchReport,
}

impl RecordedRun {
    /// A line naming where the run came from: commit, CPU, AVX-512, threads, matmul peak, command.
    pub fn provenance(&self) -> String {
        let field = |k: &str| self.info.get(k).cloned().unwrap_or(Value::Null);
        let text = |k: &str| field(k).as_str().map_or_else(|| field(k).to_string(), str::to_owned);
        // `avx512_build` is absent from records of before it was kept, when every build had it.
        let build = field("avx512_build").as_bool().unwrap_or(true);
        let simd = crate::runtime::simd_label(field("avx512").as_bool() == Some(true), build);
        format!(
            "commit {}, {} ({simd}), {} threads, fp32 matmul {:.0} GFLOP/s: `{}`",
            text("commit"),
            text("cpu"),
            text("threads"),
            self.report.peak_gflops,
            text("command")
        )
    }
}

/// Every run in `text`, the JSON lines `mim bench --out` appends: each `run` row with the
/// `variant` rows that follow it (other rows are skipped), so that published tables can be
/// printed again from the committed records (`mim bench summary`).
pub fn read_runs(text: &str) -> anyhow::Result<Vec<RecordedRun>> {
    use anyhow::Context;
    let mut runs: Vec<RecordedRun> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("line {}", i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not a JSON object", at()))?;
        match v.get("kind").and_then(Value::as_str) {
            Some("run") => {
                let peak = v
                    .get("matmul_gflops")
                    .and_then(Value::as_f64)
                    .with_context(|| format!("{}: a run row without matmul_gflops", at()))?;
                let report = BenchReport { rounds: 0, iters: 0, peak_gflops: peak, rows: Vec::new() };
                runs.push(RecordedRun { info: v, report });
            }
            Some("variant") => {
                let run = runs.last_mut().with_context(|| format!("{}: a variant row before any run row", at()))?;
                let row: Row = serde_json::from_value(v).with_context(|| format!("{}: not a variant row", at()))?;
                run.report.rounds = row.mim.train.len().max(row.mim.infer.len());
                run.report.iters = row.mim.train.first().or(row.mim.infer.first()).map_or(0, Vec::len);
                run.report.rows.push(row);
            }
            _ => {}
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_as_numpy() {
        // numpy.percentile([1, 2, 3, 4], [25, 50, 75]) = [1.75, 2.5, 3.25]
        assert_eq!(quartiles(&[4.0, 1.0, 3.0, 2.0]), Quartiles { q1: 1.75, median: 2.5, q3: 3.25 });
        // numpy.percentile([3, 1, 2, 10, 5], [25, 50, 75]) = [2, 3, 5]
        assert_eq!(quartiles(&[3.0, 1.0, 2.0, 10.0, 5.0]), Quartiles { q1: 2.0, median: 3.0, q3: 5.0 });
        assert_eq!(quartiles(&[1.5]), Quartiles { q1: 1.5, median: 1.5, q3: 1.5 });
        // numpy.percentile([0, 10], [25, 50, 75]) = [2.5, 5, 7.5]
        assert_eq!(quartiles(&[10.0, 0.0]), Quartiles { q1: 2.5, median: 5.0, q3: 7.5 });
    }

    #[test]
    fn ratios_are_taken_within_a_round() {
        let mim = vec![vec![1.0, 1.0], vec![2.0, 1.0]];
        let peer = vec![vec![2.0, 3.0], vec![3.0, 3.0]];
        assert_eq!(round_ratios(&mim, &peer), vec![2.5, 2.0]);
        assert_eq!(fastest_ratios(&mim, &peer), vec![2.0, 3.0]);
        assert_eq!(throughput(10, &mim), Some(10.0));
        assert_eq!(throughput(10, &[]), None);
    }

    fn timings(train: Vec<Vec<f64>>, infer: Vec<Vec<f64>>, peak_mib: f64) -> Timings {
        Timings { train, infer, peak_mib }
    }

    #[test]
    fn report_gives_medians_and_interquartile_ranges() {
        let row = |mask: f64, scale: f64| Row {
            workload: "fmnist-tiny".into(),
            mask_ratio: Some(mask),
            batch: 256,
            images: 256,
            flops: WorkloadFlops { train_forward: Some(1e8), infer: Some(5e7) },
            params: 10,
            // mim: 1 s per step in every round; the peer: 2, 3, 4, 5 s.
            mim: timings(vec![vec![scale]; 4], vec![vec![0.5]; 4], 500.0),
            peers: vec![PeerTimings {
                kind: PeerKind::Eager,
                timings: timings((2..6).map(|s| vec![s as f64]).collect(), vec![vec![1.0]; 4], 900.0),
                env: Value::Null,
            }],
        };
        let report = BenchReport { rounds: 4, iters: 1, peak_gflops: 300.0, rows: vec![row(0.75, 1.0), row(0.0, 3.0)] };
        let text = report.to_string();
        // Ratios 2, 3, 4, 5: median 3.5, quartiles 2.75 and 4.25; 256 img/s at 1 s a step is
        // 3 x 1e8 x 256 / 1e9 = 76.8 GFLOP/s, 26% of 300.
        let want = "| fmnist-tiny | 0.75 | torch | 256 | 256.0 | 73.1 | 3.50x [2.75-4.25] | 3.50x [2.75-4.25] | 512.0 | 256.0 | 2.00x [2.00-2.00] | 77 (26%) | 500 | 900 |";
        assert!(text.contains(want), "{text}");
        assert!(text.contains("mask 0.75 is 3.00x [3.00-3.00] faster") && text.contains("PyTorch 1.00x"), "{text}");
        assert!(text.starts_with("\n4 alternating rounds of 1 steps"), "{text}");
    }

    #[test]
    fn recorded_runs_print_the_table_they_printed() {
        let row = Row {
            workload: "beit-tiny".into(),
            mask_ratio: Some(0.4),
            batch: 256,
            images: 256,
            flops: WorkloadFlops { train_forward: Some(1e8), infer: None },
            params: 10,
            mim: timings(vec![vec![1.0, 1.0]; 3], Vec::new(), 500.0),
            peers: vec![PeerTimings {
                kind: PeerKind::Eager,
                timings: timings(vec![vec![1.5, 1.5]; 3], Vec::new(), 900.0),
                env: Value::Null,
            }],
        };
        let report = BenchReport { rounds: 3, iters: 2, peak_gflops: 200.0, rows: vec![row.clone()] };
        let info = serde_json::json!({"commit": "abc", "command": "mim bench", "cpu": "AMD EPYC", "avx512": true, "threads": 2});
        let record = |kind: &str, body: Value| {
            let mut v = info.clone();
            v.as_object_mut().unwrap().insert("kind".into(), kind.into());
            v.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            v.to_string()
        };
        let text = [
            record("run", serde_json::json!({"matmul_gflops": 200.0})),
            record("variant", serde_json::to_value(&row).unwrap()),
            String::new(),
            record("other", serde_json::json!({})),
        ]
        .join("\n");
        let runs = read_runs(&text).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].report.to_string(), report.to_string());
        assert_eq!(
            runs[0].provenance(),
            "commit abc, AMD EPYC (AVX-512), 2 threads, fp32 matmul 200 GFLOP/s: `mim bench`"
        );
        // A build without the AVX-512 kernels (`--no-default-features`) says so.
        let avx2 = text.replace("\"avx512\":true", "\"avx512\":true,\"avx512_build\":false");
        assert!(read_runs(&avx2).unwrap()[0].provenance().contains("AMD EPYC (AVX-512 CPU, AVX2 build), 2 threads"));
        let err = read_runs(&record("variant", serde_json::to_value(&row).unwrap())).unwrap_err();
        assert!(err.to_string().contains("line 1: a variant row before any run row"), "{err}");
    }

    #[test]
    fn a_row_without_peer_shows_dashes() {
        let row = Row {
            workload: "folder-jpeg".into(),
            mask_ratio: None,
            batch: 256,
            images: 1024,
            flops: WorkloadFlops { train_forward: None, infer: None },
            params: 0,
            mim: timings(vec![vec![0.5]], Vec::new(), 100.0),
            peers: Vec::new(),
        };
        let text = BenchReport { rounds: 1, iters: 1, peak_gflops: 100.0, rows: vec![row] }.to_string();
        assert!(
            text.contains("| folder-jpeg | - | - | 256 | 2048.0 | - | - | - | - | - | - | - | 100 | - |"),
            "{text}"
        );
    }
}
