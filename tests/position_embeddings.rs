//! Position embeddings are data: loaded as a weights file or checkpoint holds them (the official MAE
//! code saves and loads them; transformers 5.x leaves them at zero in a model built from a config),
//! saved by mim's checkpoints and exports, never trained in pretraining, trained in fine-tuning
//! (from the pretrained values), and 2-D sin-cos in a fresh model.

mod common;

use std::path::{Path, PathBuf};

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use common::{max_diff, subset};
use mim::checkpoint::{self, CheckpointHeader};
use mim::io::{TensorMap, parameters, read_safetensors, safetensors_bytes};
use mim::masking::Mask;
use mim::models::classifier::{Classifier, Pool, VitClassifier};
use mim::models::init::InitRng;
use mim::models::mae::{MaeConfig, MaskedAutoencoder};
use mim::models::pretrain::ModelConfig;
use mim::models::vit::sincos_pos_embed_2d;
use mim::ops::gather::gather_rows;
use mim::train::pretrain::{PretrainConfig, pretrain};
use mim::train::{OptimConfig, RunConfig, Silent};
use mim::weights::{export_weights, load_weights, mae_config_from_hf};
use rand::SeedableRng;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn hf_config() -> MaeConfig {
    mae_config_from_hf(
        &serde_json::from_str(&std::fs::read_to_string(fixture("mae_tiny_config.json")).unwrap()).unwrap(),
    )
    .unwrap()
}

fn write(path: &Path, map: &TensorMap) {
    std::fs::write(path, safetensors_bytes(map).unwrap()).unwrap();
}

fn header(cfg: &MaeConfig) -> CheckpointHeader {
    CheckpointHeader {
        mim_version: env!("CARGO_PKG_VERSION").into(),
        model: ModelConfig::Mae(cfg.clone()),
        train: serde_json::Value::Null,
        iteration: 0,
        optimizer_steps: 0,
        epoch: 0,
        seed: 0,
        classifier: None,
    }
}

#[test]
fn fresh_models_start_from_sincos_and_pretraining_leaves_them_unchanged() {
    let cfg = MaeConfig::preset("mae_micro").unwrap();
    let g = (cfg.grid(), cfg.grid());
    let fresh = cfg.init(0, &Device::flex().autodiff()).unwrap();
    assert_eq!(values(fresh.pos_embed.val()), sincos_pos_embed_2d(cfg.embed_dim, g, true));
    assert_eq!(values(fresh.decoder_pos_embed.val()), sincos_pos_embed_2d(cfg.decoder_embed_dim, g, true));

    let tmp = tempfile::tempdir().unwrap();
    let defaults = PretrainConfig::default();
    let run = PretrainConfig {
        run: RunConfig {
            data: subset(),
            out: tmp.path().join("run"),
            max_images: Some(256),
            batch_size: 64,
            epochs: 1,
            ..defaults.run
        },
        optim: OptimConfig { lr: Some(1e-2), weight_decay: 0.5, ..defaults.optim },
        model: Some("mae_micro".into()),
        ..defaults
    };
    let summary = pretrain(&run, None, &mut Silent).unwrap();
    let trained = checkpoint::load(&summary.checkpoint, &Device::flex()).unwrap().model;
    let (before, after) = (parameters(&cfg.init(run.run.seed, &Device::flex()).unwrap()), parameters(&trained));
    assert_ne!(before["patch_embed.proj.weight"], after["patch_embed.proj.weight"], "the run trained nothing");
    for key in ["pos_embed", "decoder_pos_embed"] {
        let d = max_diff(&before[key].1, &after[key].1);
        assert!(before[key] == after[key], "{key} changed in pretraining (lr 1e-2, weight decay 0.5) by up to {d}");
    }
    assert!(
        !fresh.pos_embed.is_require_grad() && !fresh.decoder_pos_embed.is_require_grad(),
        "never trained: no gradient"
    );
}

#[test]
fn zero_position_embeddings_of_transformers_5_load_as_they_are_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = hf_config();
    let device = Device::flex();
    // The HF fixture with the position embeddings a transformers 5.x model built from a config has.
    let mut hf = read_safetensors(&fixture("mae_tiny_weights.safetensors")).unwrap();
    for key in ["vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"] {
        let (_, v) = hf.get_mut(key).unwrap();
        assert!(v.iter().any(|&x| x != 0.0));
        v.iter_mut().for_each(|x| *x = 0.0);
    }
    let zero_file = tmp.path().join("zero.safetensors");
    write(&zero_file, &hf);
    let zero = load_weights(cfg.init(1, &device).unwrap(), &cfg, &zero_file).unwrap();
    let sincos = load_weights(cfg.init(1, &device).unwrap(), &cfg, &fixture("mae_tiny_weights.safetensors")).unwrap();
    let n = (cfg.num_patches() + 1) * cfg.embed_dim;
    assert_eq!(values(zero.pos_embed.val()), vec![0.0; n]);
    assert_eq!(values(zero.decoder_pos_embed.val()), vec![0.0; (cfg.num_patches() + 1) * cfg.decoder_embed_dim]);

    // The model computes with them: its encoder is the reference without position embeddings.
    let io = read_safetensors(&fixture("mae_tiny_io.safetensors")).unwrap();
    let (shape, pixels) = &io["pixel_values"];
    let imgs = Tensor::<4>::from_data(TensorData::new(pixels.clone(), shape.clone()), &device);
    let b = shape[0];
    let mask = Mask::from_noise(&io["noise"].1, b, 0.75).unwrap();
    let latent = zero.forward_encoder(imgs.clone(), &mask);
    let patches = gather_rows(zero.patch_embed.forward(imgs.clone()), mask.ids_keep_tensor(&device));
    let mut x = Tensor::cat(vec![zero.cls_token.val().repeat_dim(0, b), patches], 1);
    for block in &zero.blocks {
        x = block.forward(x);
    }
    let reference = values(zero.norm.forward(x));
    let d = max_diff(&values(latent.clone()), &reference);
    assert!(d < 1e-5, "encoder with zero position embeddings differs from the reference by {d}");
    let d = max_diff(&values(latent.clone()), &values(sincos.forward_encoder(imgs, &mask)));
    assert!(d > 1e-2, "zero and sin-cos position embeddings give the same encoder output (max difference {d})");
    let d =
        max_diff(&values(zero.forward_decoder(latent.clone(), &mask)), &values(sincos.forward_decoder(latent, &mask)));
    assert!(d > 1e-2, "zero and sin-cos decoder position embeddings give the same predictions (max difference {d})");

    // Exported as they are (official names), and loaded back exactly.
    let exported = tmp.path().join("exported.safetensors");
    export_weights(&zero, &cfg, &exported).unwrap();
    let file = read_safetensors(&exported).unwrap();
    assert_eq!(file["pos_embed"], (vec![1, cfg.num_patches() + 1, cfg.embed_dim], vec![0.0; n]));
    let back = load_weights(cfg.init(2, &device).unwrap(), &cfg, &exported).unwrap();
    assert_eq!(parameters(&back), parameters(&zero));

    // Saved in and loaded from a mim checkpoint.
    let ck = tmp.path().join("checkpoint.mim");
    checkpoint::save(&ck, &header(&cfg), &zero, None).unwrap();
    let loaded = checkpoint::load(&ck, &device).unwrap().model;
    assert_eq!(parameters(&loaded), parameters(&zero));
    assert_eq!(values(loaded.pos_embed.val()), vec![0.0; n]);
}

#[test]
fn position_embeddings_of_another_grid_are_refused_naming_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let cfg = MaeConfig::preset("mae_micro").unwrap();
    let path = tmp.path().join("w.safetensors");
    export_weights(&cfg.init(0, &device).unwrap(), &cfg, &path).unwrap();
    let good = read_safetensors(&path).unwrap();

    // Trained at 16 px: a 4x4 grid instead of 7x7.
    let mut other = good.clone();
    other.insert("pos_embed".into(), (vec![1, 17, 64], sincos_pos_embed_2d(64, (4, 4), true)));
    write(&path, &other);
    let err = format!("{:#}", load_weights(cfg.init(0, &device).unwrap(), &cfg, &path).unwrap_err());
    for needle in
        ["'pos_embed'", "another configuration", "[1, 17, 64]", "4x4 patch grid", "[1, 50, 64]", "7x7", "--img-size"]
    {
        assert!(err.contains(needle), "error lacks '{needle}': {err}");
    }

    let mut missing = good;
    missing.remove("decoder_pos_embed");
    write(&path, &missing);
    let err = format!("{:#}", load_weights(cfg.init(0, &device).unwrap(), &cfg, &path).unwrap_err());
    assert!(err.contains("has no 'decoder_pos_embed'"), "{err}");
}

#[test]
fn finetuning_trains_the_position_embeddings_from_the_pretrained_ones() {
    let device = Device::flex().autodiff();
    let cfg = MaeConfig::preset("mae_micro").unwrap();
    let mut mae: MaskedAutoencoder = cfg.init(0, &device).unwrap();
    // Pretrained values that are not sin-cos, to see that fine-tuning starts from them.
    mae.pos_embed = mae.pos_embed.map(|p| p.detach() * 0.5);
    let pretrained = values(mae.pos_embed.val());
    let model = VitClassifier::from_mae(mae, 10, Pool::Avg, 0.01, 0);
    assert_eq!(values(model.pos_embed.val()), pretrained);
    assert!(model.pos_embed.is_require_grad());
    assert_eq!(
        model.layer_id("pos_embed"),
        0,
        "position embeddings belong to the embedding layer (layer-wise lr decay)"
    );
    assert!(parameters(&model).contains_key("pos_embed"));

    let imgs = Tensor::<4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let loss = model.forward_train(imgs.clone(), &mut InitRng::seed_from_u64(0), 0).powi_scalar(2).sum();
    let grads = loss.backward();
    let g = model.pos_embed.grad(&grads).expect("fine-tuning gives the position embeddings a gradient");
    assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
    let grads = GradientsParams::from_grads(grads, &model);
    let model = ModuleOptimizer::from(AdamWConfig::new().build()).step(1e-3, model, grads);
    assert!(max_diff(&values(model.pos_embed.val()), &pretrained) > 1e-4, "an optimizer step left pos_embed unchanged");

    // Partial fine-tuning freezes them with the rest of the embedding.
    let model = model.freeze_first(1);
    assert!(!model.pos_embed.is_require_grad());
    let grads = model.forward_train(imgs, &mut InitRng::seed_from_u64(0), 1).powi_scalar(2).sum().backward();
    assert!(model.pos_embed.grad(&grads).is_none());
}
