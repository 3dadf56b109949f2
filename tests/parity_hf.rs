//! Parity with Hugging Face `ViTMAEForPreTraining` (fixtures from tools/make_mae_fixtures.py):
//! HF-named weights load through mim's loader, and masking, encoder output, predictions, loss and
//! every parameter gradient match PyTorch on fixed weights, pixels and noise.

mod common;

use common::{assert_gradients_close, max_diff, qkv_parts};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use mim::io::{TensorMap, gradients, read_safetensors};
use mim::masking::Mask;
use mim::models::mae::{MaeConfig, MaskedAutoencoder};
use mim::models::vit::{patchify, sincos_pos_embed_2d};
use mim::weights::{from_pytorch_layout, hf_to_official, load_weights, mae_config_from_hf};

/// Largest tolerated absolute difference (values are O(1); PyTorch and burn differ in reduction order).
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Case {
    cfg: MaeConfig,
    io: TensorMap,
    device: Device,
}

impl Case {
    fn new() -> Self {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("mae_tiny_config.json")).unwrap()).unwrap();
        Case {
            cfg: mae_config_from_hf(&json).unwrap(),
            io: read_safetensors(&fixture("mae_tiny_io.safetensors")).unwrap(),
            device: Device::flex().autodiff(),
        }
    }

    fn model(&self, cfg: &MaeConfig) -> MaskedAutoencoder {
        load_weights(cfg.init(123, &self.device).unwrap(), cfg, &fixture("mae_tiny_weights.safetensors")).unwrap()
    }

    fn tensor<const D: usize>(&self, name: &str) -> Tensor<D> {
        let (shape, v) = &self.io[name];
        Tensor::from_data(TensorData::new(v.clone(), shape.clone()), &self.device)
    }

    fn mask(&self) -> Mask {
        let noise = &self.io["noise"];
        Mask::from_noise(&noise.1, noise.0[0], 0.75).unwrap()
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
    let d = max_diff(ours, theirs);
    eprintln!("{what}: max |mim - torch| = {d:.2e}");
    assert!(d <= TOL, "{what}: max difference {d} > {TOL}");
}

#[test]
fn masking_matches_hf_random_masking() {
    let c = Case::new();
    let m = c.mask();
    let as_usize = |name: &str| c.io[name].1.iter().map(|&v| v as usize).collect::<Vec<_>>();
    assert_eq!(m.ids_keep, as_usize("ids_keep"));
    assert_eq!(m.ids_restore, as_usize("ids_restore"));
    assert_eq!(m.mask, c.io["mask"].1);
}

#[test]
fn sincos_position_embeddings_match_hf() {
    let c = Case::new();
    let w = read_safetensors(&fixture("mae_tiny_weights.safetensors")).unwrap();
    let g = (c.cfg.grid(), c.cfg.grid());
    assert!(
        max_diff(&sincos_pos_embed_2d(c.cfg.embed_dim, g, true), &w["vit.embeddings.position_embeddings"].1) < 1e-6
    );
    assert!(max_diff(&sincos_pos_embed_2d(c.cfg.decoder_embed_dim, g, true), &w["decoder.decoder_pos_embed"].1) < 1e-6);
}

#[test]
fn forward_and_loss_match_hf() {
    let c = Case::new();
    let model = c.model(&c.cfg);
    let mask = c.mask();
    let x = c.tensor::<4>("pixel_values");
    assert_close("patchify", &values(patchify(x.clone(), c.cfg.patch_size)), &c.io["patchified"].1);
    assert_close(
        "encoder output",
        &values(model.forward_encoder(x.clone(), &mask)),
        &c.io["encoder_last_hidden_state"].1,
    );
    let latent = model.forward_encoder(x.clone(), &mask);
    assert_close("decoder predictions", &values(model.forward_decoder(latent.clone(), &mask)), &c.io["logits"].1);
    let removed = mask.ids_target_tensor(&c.device).unsqueeze_dim::<3>(2).repeat_dim(2, c.cfg.pred_dim());
    let hf_removed = values(c.tensor::<3>("logits").gather(1, removed));
    assert_close(
        "predictions of the removed patches",
        &values(model.forward_decoder_targets(latent, &mask)),
        &hf_removed,
    );
    assert_close("loss (norm_pix_loss)", &values(model.forward(x.clone(), &mask).loss), &c.io["loss"].1);

    let raw_cfg = MaeConfig { norm_pix_loss: false, ..c.cfg.clone() };
    let raw = c.model(&raw_cfg).forward(x, &mask);
    assert_close("loss (raw pixels)", &values(raw.loss), &c.io["loss_no_norm_pix"].1);
}

#[test]
fn gradients_of_every_parameter_match_hf() {
    let c = Case::new();
    let model = c.model(&c.cfg);
    let out = model.forward(c.tensor::<4>("pixel_values"), &c.mask());
    let ours = gradients(&model, &out.loss.backward());

    let hf: TensorMap =
        c.io.iter().filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n.to_string(), v.clone()))).collect();
    let theirs = from_pytorch_layout(&c.cfg, &hf_to_official(&hf).unwrap()).unwrap();
    // The per-part split of the fused gradients is HF's own q, k and v gradients (PyTorch [out, in],
    // transposed here to burn's [in, out]).
    let (shape, fused) = &theirs["decoder_blocks.1.attn.qkv.weight"];
    for (part, role) in qkv_parts(shape, fused).iter().zip(["q", "k", "v"]) {
        let (s, g) = &hf[&format!("decoder.decoder_layers.1.attention.{role}_proj.weight")];
        let transposed: Vec<f32> = (0..s[1]).flat_map(|i| (0..s[0]).map(move |o| g[o * s[1] + i])).collect();
        assert_eq!(part, &transposed, "{role} part");
    }
    assert_gradients_close("MAE", &ours, &theirs, TOL);
}

#[test]
fn transformers_4_checkpoint_names_load_like_5() {
    // Published HF checkpoints (facebook/vit-mae-*) use the transformers 4.x names.
    let v5 = read_safetensors(&fixture("mae_tiny_weights.safetensors")).unwrap();
    let v4: TensorMap = v5
        .iter()
        .map(|(k, t)| {
            let k = k
                .replace("vit.layers.", "vit.encoder.layer.")
                .replace("attention.q_proj", "attention.attention.query")
                .replace("attention.k_proj", "attention.attention.key")
                .replace("attention.v_proj", "attention.attention.value")
                .replace("attention.o_proj", "attention.output.dense")
                .replace("mlp.fc1", "intermediate.dense")
                .replace("mlp.fc2", "output.dense");
            (k, t.clone())
        })
        .collect();
    assert!(v4.keys().any(|k| k.contains("attention.attention.query")));
    assert_eq!(hf_to_official(&v4).unwrap(), hf_to_official(&v5).unwrap());
}

/// The same checks through burn's generic ops instead of mim's fused kernels: the code path a GPU
/// backend runs.
#[test]
fn generic_ops_path_matches_hf_too() {
    let before = mim::ops::fused_dispatches();
    forward_and_loss_match_hf();
    assert!(mim::ops::fused_dispatches() > before, "the default path should use the fused kernels");
    let before = mim::ops::fused_dispatches();
    mim::ops::with_generic_ops(|| {
        forward_and_loss_match_hf();
        gradients_of_every_parameter_match_hf();
    });
    assert_eq!(mim::ops::fused_dispatches(), before, "a fused kernel ran inside with_generic_ops");
}
