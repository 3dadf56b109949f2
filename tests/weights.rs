//! The one weights loader (`mim::weights::open`): every committed fixture is recognised with its
//! naming, model and the configuration its PyTorch reference was built with; what shapes cannot say
//! is reported, and a configuration given by the user replaces it.

use std::path::PathBuf;

use burn::tensor::Device;
use mim::io::{Precision, parameters};
use mim::models::beit::BeitConfig;
use mim::models::mae::MaeConfig;
use mim::models::pretrain::ModelConfig;
use mim::weights::{Holds, Naming, export_weights, mae_config_from_hf, open};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

#[test]
fn beit_files_give_their_whole_configuration() {
    for variant in ["shared", "block"] {
        let w = open(&fixture(&format!("beit_tiny_{variant}_weights.safetensors"))).unwrap();
        let want: BeitConfig =
            serde_json::from_value(json("beit_tiny_config.json")["models"][variant].clone()).unwrap();
        assert_eq!((w.detected.naming, w.detected.holds), (Naming::Official, Holds::Beit));
        assert_eq!(w.detected.config, ModelConfig::Beit(want), "{variant}");
        assert!(w.detected.assumed.is_empty() && w.detected.unknown.is_empty());
    }
}

#[test]
fn swin_and_simmim_files_give_their_configuration_but_the_image_size() {
    for (file, holds) in [
        ("swin_tiny_weights.safetensors", Holds::Swin { num_classes: 5 }),
        ("swin_tiny_simmim.safetensors", Holds::SimMim),
    ] {
        let w = open(&fixture(file)).unwrap();
        assert_eq!((w.detected.naming, w.detected.holds), (Naming::Timm, holds));
        let ModelConfig::Swin(cfg) = &w.detected.config else { panic!("{file}: not Swin") };
        assert_eq!(
            (cfg.img_size, cfg.patch_size, cfg.embed_dim, &cfg.depths, &cfg.num_heads, cfg.window_size),
            (32, 2, 8, &vec![2, 2, 2], &vec![2, 2, 4], 4),
            "{file}"
        );
        let assumed: Vec<&str> = w.detected.assumed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(assumed, ["img_size"]);
    }
}

#[test]
fn hugging_face_mae_needs_its_config_for_the_heads_and_then_loads() {
    let w = open(&fixture("mae_tiny_weights.safetensors")).unwrap();
    assert_eq!(w.detected.naming, Naming::HuggingFace);
    assert_eq!(w.detected.holds, Holds::Mae { decoder: true });
    // A 24-wide decoder fits no head-width rule: the file cannot build a model on its own.
    assert_eq!(w.detected.unknown, ["decoder heads (width 24)"]);
    let e = w.mae(&Device::flex()).unwrap_err().to_string();
    assert!(e.contains("does not say its decoder heads") && e.contains("--hf-config"), "{e}");
    let cfg = mae_config_from_hf(&json("mae_tiny_config.json")).unwrap();
    let w = w.with_config(ModelConfig::Mae(cfg.clone()), "config".into()).unwrap();
    let (model, got) = w.mae(&Device::flex()).unwrap();
    assert_eq!(got, cfg);
    let direct = mim::weights::load_weights(cfg.init(0, &Device::flex()).unwrap(), &cfg, &w.path).unwrap();
    assert_eq!(parameters(&model), parameters(&direct));
}

#[test]
fn a_configuration_of_another_family_is_refused() {
    let w = open(&fixture("swin_tiny_weights.safetensors")).unwrap();
    let e = w.with_config(ModelConfig::Mae(MaeConfig::preset("mae_micro").unwrap()), "preset".into()).unwrap_err();
    assert!(e.to_string().contains("holds a Swin model"), "{e}");
}

#[test]
fn mim_export_is_read_back_as_the_same_model() {
    let cfg = MaeConfig::preset("mae_micro").unwrap();
    let model = cfg.init(3, &Device::flex()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    export_weights(&model, &cfg, &path).unwrap();
    let w = open(&path).unwrap();
    assert_eq!(w.detected.holds, Holds::Mae { decoder: true });
    // The configuration comes from the file's metadata: mae_micro's 4 heads are not the 1 that
    // the shapes would suggest (64 wide, head width 64).
    assert!(w.config_source.contains("metadata") && w.detected.assumed.is_empty(), "{}", w.config_source);
    let (back, got) = w.mae(&Device::flex()).unwrap();
    assert_eq!(got, cfg);
    assert_eq!(parameters(&back), parameters(&model));
}

#[test]
fn unknown_tensors_are_refused_with_what_was_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let map = mim::io::TensorMap::from([("conv1.weight".to_string(), (vec![2, 2], vec![0.0; 4]))]);
    std::fs::write(&path, mim::io::safetensors_bytes(&map).unwrap()).unwrap();
    let e = format!("{:#}", open(&path).unwrap_err());
    assert!(e.contains("cannot tell which model") && e.contains("conv1.weight"), "{e}");
}

/// A micro MAE as the weights of a (pretend) checkpoint with its normalisation, in a fresh folder.
fn micro_weights() -> (
    MaeConfig,
    mim::models::mae::MaskedAutoencoder,
    mim::weights::Normalization,
    tempfile::TempDir,
    mim::weights::Weights,
) {
    let cfg = MaeConfig::preset("mae_micro").unwrap();
    let model = cfg.init(5, &Device::flex()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let norm = mim::weights::Normalization { mean: vec![0.3], std: vec![0.2] };
    let start = mim::weights::from_mae(&model, &cfg, Some(norm.clone()), &dir.path().join("run.mim"));
    (cfg, model, norm, dir, start)
}

#[test]
fn convert_round_trips_bit_exactly_through_official_and_hugging_face_names() {
    use mim::weights::convert;
    let (cfg, model, norm, dir, start) = micro_weights();
    let official = dir.path().join("official.safetensors");
    convert(&start, Naming::Official, &official, Precision::F32).unwrap();
    let hf = dir.path().join("hf/model.safetensors");
    let written = convert(&open(&official).unwrap(), Naming::HuggingFace, &hf, Precision::F32).unwrap();
    assert_eq!(written.written, [hf.clone(), dir.path().join("hf/config.json")]);
    let back = open(&hf).unwrap();
    assert_eq!(back.detected.naming, Naming::HuggingFace);
    let (loaded, got) = back.mae(&Device::flex()).unwrap();
    assert_eq!(got, cfg);
    assert_eq!(parameters(&loaded), parameters(&model), "mim -> official -> Hugging Face -> mim");
    // The dataset's normalisation travels with the weights.
    assert_eq!(back.input_normalization().unwrap(), (norm, "stored with the weights".to_string()));
    // Nothing is overwritten by another model's configuration.
    let other = MaeConfig { depth: 1, ..cfg };
    let e = convert(
        &mim::weights::from_mae(&other.init(0, &Device::flex()).unwrap(), &other, None, &official),
        Naming::HuggingFace,
        &hf,
        Precision::F32,
    );
    assert!(e.unwrap_err().to_string().contains("exists with another configuration"));
    let e = convert(&start, Naming::Official, &dir.path().join("x.pth"), Precision::F32).unwrap_err().to_string();
    assert!(e.contains("not .pth"), "{e}");
}

#[test]
fn half_precision_files_are_half_the_size_and_load_to_within_f16_rounding() {
    use mim::weights::convert;
    let (cfg, model, norm, dir, start) = micro_weights();
    let (full, half) = (dir.path().join("f32.safetensors"), dir.path().join("f16.safetensors"));
    convert(&start, Naming::Official, &full, Precision::F32).unwrap();
    convert(&start, Naming::Official, &half, Precision::F16).unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len() as f64;
    assert!(size(&half) < 0.55 * size(&full), "{} vs {} bytes", size(&half), size(&full));
    let back = open(&half).unwrap();
    assert_eq!(back.input_normalization().unwrap().0, norm, "the metadata is kept");
    let (loaded, got) = back.mae(&Device::flex()).unwrap();
    assert_eq!(got, cfg);
    let (ours, theirs) = (parameters(&loaded), parameters(&model));
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (name, (shape, v)) in &theirs {
        let (s, h) = &ours[name];
        assert_eq!(s, shape, "{name}");
        for (a, b) in h.iter().zip(v) {
            // f16 keeps 11 significant bits: relative error at most 2^-11 (absolute below its smallest normal).
            assert!((a - b).abs() <= b.abs() * 4.9e-4 + 6.2e-5, "{name}: {a} vs {b}");
        }
    }
}
