//! Sample masks of every strategy on the 14x14 patch grid of a 224 px ViT-B/16, one row each:
//! MAE random (75%), BEiT block-wise (75 patches), MAE's grid ablation, SimMIM (squares of 32 px,
//! 60%, SimMIM's ViT setting: 2x2 patches of 16 px per square), and the BEiT block masks made
//! MAE-ready with exactly 49 visible patches. Writes masks.png (or the path given) and prints the ratios.
//!
//! cargo run --release --example masks [-- out.png]

use mim::data::loader::rng_for;
use mim::masking::{BlockMasking, BoolMask, MaskStrategy, SimMimMasking};

fn main() -> anyhow::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "masks.png".into());
    let (grid, n) = ((14, 14), 8);
    let mut rng = rng_for(&[0x4D41534B]);
    let strategies = [
        ("random 0.75", MaskStrategy::Random { ratio: 0.75 }),
        ("BEiT block-wise 75/196", MaskStrategy::Block(BlockMasking::beit(75))),
        ("grid (keep 1 of 2x2)", MaskStrategy::Grid),
        (
            "SimMIM 32 px squares 0.6",
            MaskStrategy::SimMim(SimMimMasking { mask_patch_size: 32, model_patch_size: 16, mask_ratio: 0.6 }),
        ),
    ];
    let mut rows = Vec::new();
    for (name, strategy) in &strategies {
        let m = strategy.sample(grid, n, &mut rng)?;
        println!("{name:>26}: masked fraction {:.3}", m.count() as f64 / m.masked.len() as f64);
        rows.push(m);
    }
    // The BEiT row's masks with the visible count made exactly 49 for MAE (random top-up / trim).
    let mae = rows[1].to_mae_mask(49, &mut rng)?;
    let topped = BoolMask::new(mae.mask.iter().map(|&v| v > 0.5).collect(), n, grid)?;
    println!(
        "{:>26}: masked fraction {:.3}",
        "BEiT blocks, 49 visible",
        topped.count() as f64 / topped.masked.len() as f64
    );
    rows.push(topped);
    let cells: Vec<&BoolMask> = rows.iter().collect();
    let mut names: Vec<String> = strategies.iter().map(|(name, _)| name.to_string()).collect();
    names.push("BEiT blocks, 49 visible".into());
    let title = "masks on the 14x14 patch grid of ViT-B/16 at 224 px (dark = masked), 8 samples each";
    mim::viz::save_png(&mim::viz::mask_grid_image(&cells, 8, title, &names)?, std::path::Path::new(&out))?;
    println!("rows top to bottom as listed; wrote {out}");
    Ok(())
}
