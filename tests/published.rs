//! Published weight formats, each a small model saved exactly as its repository saves
//! (tools/make_published_fixtures.py, manifest in tests/fixtures/published/manifest.json), loaded
//! through the one loader `mim::weights::open` with nothing but the file, and compared with the
//! PyTorch outputs recorded beside it.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use mim::io::{TensorMap, read_safetensors};
use mim::masking::Mask;
use mim::models::mae::MaeConfig;
use mim::models::pretrain::ModelConfig;
use mim::weights::{Holds, Naming, open};

/// Forward passes in f32 over a few blocks; the fixtures reproduce PyTorch to 0 in PyTorch.
const TOL: f32 = 2e-5;

fn published(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published").join(name)
}

fn io(name: &str) -> TensorMap {
    read_safetensors(&published(name)).unwrap()
}

fn tensor<const D: usize>(io: &TensorMap, name: &str) -> Tensor<D> {
    let (s, v) = &io[name];
    Tensor::from_data(TensorData::new(v.clone(), s.clone()), &Device::flex())
}

fn assert_close<const D: usize>(what: &str, ours: Tensor<D>, io: &TensorMap, name: &str) {
    let (shape, theirs) = &io[name];
    assert_eq!(&ours.dims().to_vec(), shape, "{what}: shape");
    let ours = ours.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let worst = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
    assert!(worst < TOL, "{what}: {name} differs by {worst:e}");
    eprintln!("{what}: {name} within {worst:.1e}");
}

/// The config the fixture was built with, field by field from the manifest.
fn manifest_config(file: &str) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(published("manifest.json")).unwrap()).unwrap();
    let fixtures = m["fixtures"].as_array().unwrap();
    fixtures.iter().find(|f| f["file"] == file).unwrap_or_else(|| panic!("{file} not in the manifest"))["config"]
        .clone()
}

fn mae_config(file: &str) -> MaeConfig {
    let c = manifest_config(file);
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    MaeConfig {
        img_size: u("img_size"),
        patch_size: u("patch_size"),
        in_chans: u("in_chans"),
        embed_dim: u("embed_dim"),
        depth: u("depth"),
        num_heads: u("num_heads"),
        decoder_embed_dim: c["decoder_embed_dim"].as_u64().map_or(512, |v| v as usize),
        decoder_depth: c["decoder_depth"].as_u64().map_or(8, |v| v as usize),
        decoder_num_heads: c["decoder_num_heads"].as_u64().map_or(16, |v| v as usize),
        mlp_ratio: c["mlp_ratio"].as_f64().unwrap(),
        norm_pix_loss: c["norm_pix_loss"].as_bool().unwrap_or(false),
        layer_norm_eps: c["layer_norm_eps"].as_f64().unwrap(),
        ..MaeConfig::preset("mae_micro").unwrap()
    }
}

#[test]
fn hugging_face_vit_mae_with_its_config_json() {
    let w = open(&published("mae_hf/model.safetensors")).unwrap();
    assert_eq!((w.detected.naming, w.detected.holds), (Naming::HuggingFace, Holds::Mae { decoder: true }));
    assert!(w.config_source.contains("config.json"), "{}", w.config_source);
    let (model, cfg) = w.mae(&Device::flex()).unwrap();
    // Hugging Face's eps 1e-12 is honoured, not mim's 1e-6.
    assert_eq!(cfg.layer_norm_eps, 1e-12);
    let io = io("mae_hf_io.safetensors");
    let x = tensor::<4>(&io, "pixel_values");
    let (s, noise) = &io["noise"];
    let mask = Mask::from_noise(noise, s[0], 0.75).unwrap();
    let latent = model.forward_encoder(x.clone(), &mask);
    assert_close("HF MAE", latent.clone(), &io, "encoder_last_hidden_state");
    let pred = model.forward_decoder(latent, &mask);
    assert_close("HF MAE", pred.clone(), &io, "logits");
    assert_close("HF MAE", model.forward_loss(x, pred, &mask), &io, "loss");
}

#[test]
fn timm_vit_mae_encoder() {
    let w = open(&published("mae_timm.safetensors")).unwrap();
    assert_eq!(w.detected.holds, Holds::Mae { decoder: false });
    // The reconstruction picture needs the decoder, which this file does not have.
    let e = w.mae(&Device::flex()).unwrap_err().to_string();
    assert!(e.contains("only the MAE encoder"), "{e}");
    let want = mae_config("mae_timm.safetensors");
    let w = w.with_config(ModelConfig::Mae(want.clone()), "manifest".into()).unwrap();
    let (model, _) = w.mae_encoder(0, &Device::flex()).unwrap();
    let io = io("mae_timm_io.safetensors");
    let x = tensor::<4>(&io, "pixel_values");
    let mask = Mask::keep_all(2, want.num_patches());
    assert_close("timm ViT (MAE)", model.forward_encoder(x, &mask), &io, "features");
}

#[test]
fn timm_swin_classifier() {
    let w = open(&published("swin_timm.safetensors")).unwrap();
    assert_eq!((w.detected.naming, w.detected.holds), (Naming::Timm, Holds::Swin { num_classes: 5 }));
    let model = w.swin(&Device::flex()).unwrap();
    let io = io("swin_timm_io.safetensors");
    assert_close("timm Swin", model.forward(tensor::<4>(&io, "pixel_values")), &io, "logits");
}
