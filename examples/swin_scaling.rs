//! Inference time per image of a Swin Transformer and of a global-attention ViT at growing image
//! sizes: Swin attends within fixed windows, so its cost grows about linearly with the image area;
//! the ViT's attention is quadratic in the number of patches and takes over as images grow.
//!
//! Swin-T widths and depths (96 wide, 2-2-6-2 blocks, patch 4) with window 8, so that every stage
//! resolution of 64, 128 and 256 px images is divisible by the window; the ViT has Swin-T's first-stage
//! width and patch (96 wide, 3 heads, patch 4: as many tokens as Swin's first stage) and its 12 blocks.
//! A benchmark, not a test: numbers depend on the machine and its load.
//!
//! cargo run --release --example swin_scaling

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use mim::models::init::InitRng;
use mim::models::swin::SwinConfig;
use mim::models::vit::{Block, PatchEmbed};
use rand::SeedableRng;

const SIZES: [usize; 3] = [64, 128, 256];
const BATCH: usize = 2;

/// Seconds per image of `f` on a `[BATCH, 3, size, size]` batch: one warm-up call, then the best of two.
fn per_image(device: &Device, size: usize, f: impl Fn(Tensor<4>) -> Tensor<2>) -> f64 {
    let imgs = Tensor::<4>::random([BATCH, 3, size, size], Distribution::Normal(0.0, 1.0), device);
    f(imgs.clone()).into_data();
    (0..2)
        .map(|_| {
            let t = Instant::now();
            f(imgs.clone()).into_data();
            t.elapsed().as_secs_f64() / BATCH as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> anyhow::Result<()> {
    mim::runtime::tune_allocator();
    let device = Device::flex();
    let mut rng = InitRng::seed_from_u64(0);
    let patch_embed = PatchEmbed::new(4, 3, 96, &mut rng, &device);
    let blocks: Vec<Block> = (0..12).map(|_| Block::new(96, 3, 4.0, &mut rng, &device)).collect();
    let vit = |imgs: Tensor<4>| {
        let x = blocks.iter().fold(patch_embed.forward(imgs), |x, b| b.forward(x));
        x.mean_dim(1).squeeze_dim::<2>(1)
    };

    println!(
        "{:>6} {:>8} {:>14} {:>14} {:>14} {:>14}",
        "pixels", "tokens", "Swin ms/img", "x prev", "ViT ms/img", "x prev"
    );
    let mut prev: Option<(f64, f64)> = None;
    for size in SIZES {
        let cfg = SwinConfig { img_size: size, window_size: 8, ..SwinConfig::preset("swin_tiny_patch4_window7_224")? };
        let swin = cfg.init(0, &device)?;
        let ts = per_image(&device, size, |imgs| swin.forward(imgs));
        let tv = per_image(&device, size, vit);
        let ratio = |now: f64, before: Option<f64>| before.map_or("-".to_string(), |b| format!("{:.1}x", now / b));
        println!(
            "{:>6} {:>8} {:>14.1} {:>14} {:>14.1} {:>14}",
            size,
            (size / 4).pow(2),
            ts * 1e3,
            ratio(ts, prev.map(|p| p.0)),
            tv * 1e3,
            ratio(tv, prev.map(|p| p.1))
        );
        prev = Some((ts, tv));
    }
    println!("(area grows 4x per row; batch {BATCH}, flex backend, forward only)");
    Ok(())
}
