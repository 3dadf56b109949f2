//! The MAE forward pass through the library API: mask, encode the visible patches, decode, loss.
//!
//! cargo run --release --example quickstart

use burn::tensor::{Device, Distribution, Tensor};
use mim::data::loader::rng_for;
use mim::masking::{Mask, uniform_noise};
use mim::models::mae::MaeConfig;

fn main() -> anyhow::Result<()> {
    let device = Device::flex();
    let cfg = MaeConfig::preset("mae_tiny_28")?;
    let model = cfg.init(0, &device)?;
    let imgs = Tensor::<4>::random([8, 1, 28, 28], Distribution::Default, &device);
    let mask = Mask::from_noise(&uniform_noise(&mut rng_for(&[0]), 8, cfg.num_patches()), 8, 0.75)?;
    let latent = model.forward_encoder(imgs.clone(), &mask); // visible patches only
    let pred = model.forward_decoder_targets(latent.clone(), &mask); // the removed patches only
    let loss = model.forward_loss(imgs, pred.clone(), &mask);
    println!("latent {:?}, prediction {:?}, loss {:.4}", latent.dims(), pred.dims(), loss.into_scalar::<f32>());
    Ok(())
}
