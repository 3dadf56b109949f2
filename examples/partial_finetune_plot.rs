//! The MAE paper's figure 9 on your runs: best test top-1 against the number of fine-tuned blocks.
//!
//! ```bash
//! cargo run --release --example partial_finetune_plot -- out.png 0=runs/ft-k0 1=runs/ft-k1 6=runs/ft
//! ```
//! Each `K=DIR` is a `mim finetune` output folder (`--trainable-blocks K`; all blocks for the last).

use anyhow::{Context, Result, bail};
use mim::train::finetune::{read_results, results_path};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, runs)) = args.split_first() else { bail!("usage: partial_finetune_plot OUT.png K=DIR [K=DIR ...]") };
    let mut points = Vec::new();
    for run in runs {
        let (k, dir) = run.split_once('=').with_context(|| format!("'{run}' is not K=DIR"))?;
        let k: f64 = k.parse().with_context(|| format!("'{k}' is not a number of blocks"))?;
        let best = read_results(&results_path(dir.as_ref()))?.iter().map(|r| r.top1).fold(0.0, f64::max);
        println!("{k} blocks: best top-1 {best:.2}%");
        points.push((k, best));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    mim::viz::line_chart(
        out.as_ref(),
        "Partial fine-tuning",
        "fine-tuned blocks",
        "test top-1 (%)",
        &[("MAE pretrained", points)],
    )?;
    println!("wrote {out}");
    Ok(())
}
