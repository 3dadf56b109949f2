//! Resampling and weight resizing against PyTorch (`tools/make_resize_fixtures.py`, torch 2.15,
//! torchvision 0.29, timm 1.0.31, scipy): torch's `interpolate`, the official evaluation transform,
//! the bicubic random resized crop, MAE's `interpolate_pos_embed` and the three published ways of
//! resizing a relative position bias table.

mod common;

use std::path::Path;

use common::max_diff;
use mim::data::Image;
use mim::data::augment::Transform;
use mim::data::resize::{Resample, resize};
use mim::io::{TensorMap, read_safetensors};
use mim::weights::resize::{RelPosResize, interpolate_pos_embed, resize_rel_pos_bias_table};
use rand::SeedableRng;

/// Values of order 1 throughout; torch computes its antialiasing weights in f32 (about 3e-6 off).
const TOL: f32 = 1e-5;

/// A fixture tensor: shape and values.
type Tensor = (Vec<usize>, Vec<f32>);

fn fixtures() -> TensorMap {
    read_safetensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize/resize.safetensors"))
        .expect("fixtures")
}

/// The cases `prefix.<k>.*` of the fixture file, in order: `(k, tensors by suffix)`.
fn cases<'a>(f: &'a TensorMap, prefix: &str) -> Vec<(String, impl Fn(&str) -> &'a Tensor)> {
    let ks: Vec<String> =
        f.keys().filter_map(|k| k.strip_prefix(prefix)?.strip_suffix(".out")).map(str::to_string).collect();
    assert!(!ks.is_empty(), "no '{prefix}' cases");
    ks.into_iter()
        .map(|k| {
            let base = format!("{prefix}{k}");
            (k, move |s: &str| f.get(&format!("{base}.{s}")).unwrap_or_else(|| panic!("no {base}.{s}")))
        })
        .collect()
}

fn image((shape, v): &Tensor) -> Image {
    Image { height: shape[0], width: shape[1], channels: shape[2], pixels: v.iter().map(|&p| p as u8).collect() }
}

fn apply(t: &Transform, img: &Image) -> Vec<f32> {
    let c = img.channels;
    let mut out = vec![0.0; c * t.size() * t.size()];
    t.apply(img, &vec![0.0; c], &vec![1.0; c], &mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &mut out);
    out
}

#[test]
fn resize_matches_torch_interpolate() {
    let f = fixtures();
    let mut checked = 0;
    for (key, (shape, want)) in &f {
        let Some(rest) = key.strip_prefix("interp.") else { continue };
        let parts: Vec<&str> = rest.split('.').collect();
        let [name, mode, aa, size] = parts[..] else { continue };
        let (xs, x) = &f[&format!("interp.{name}.x")];
        let resample = if mode == "bicubic" { Resample::Bicubic } else { Resample::Bilinear };
        let (h, w) = size.split_once('x').unwrap();
        let to = (h.parse().unwrap(), w.parse().unwrap());
        assert_eq!(shape, &[xs[0], to.0, to.1]);
        let got = resize(x, xs[0], (xs[1], xs[2]), to, resample, aa == "aa");
        let d = max_diff(&got, want);
        assert!(d < TOL, "{key}: max |diff| {d}");
        checked += 1;
    }
    assert_eq!(checked, 20);
}

#[test]
fn evaluation_transform_matches_torchvision_resize_and_center_crop() {
    let f = fixtures();
    for (k, t) in cases(&f, "eval.") {
        let p = &t("params").1;
        let (size, crop_pct) = (p[0] as usize, p[1] as f64);
        let img = image(t("image"));
        // Transform::Resize is the official crop fraction: 224/256 at these sizes.
        let transforms = if crop_pct == 224.0 / 256.0 {
            vec![Transform::CenterCrop { size, crop_pct }, Transform::Resize { size }]
        } else {
            vec![Transform::CenterCrop { size, crop_pct }]
        };
        for transform in transforms {
            let d = max_diff(&apply(&transform, &img), &t("out").1);
            assert!(d < TOL, "eval.{k} {transform:?}: max |diff| {d}");
        }
    }
}

#[test]
fn bicubic_random_resized_crop_matches_torchvision() {
    let f = fixtures();
    for (k, t) in cases(&f, "rrc.") {
        let img = image(t("image"));
        let size = t("out").0[1];
        // Scale 1 and the image's own ratio: the crop is the whole image, as in the fixture.
        let ratio = img.width as f64 / img.height as f64;
        let crop = Transform::RandomResizedCrop {
            size,
            scale: (1.0, 1.0),
            ratio: (ratio, ratio),
            hflip: false,
            color_jitter: 0.0,
        };
        let d = max_diff(&apply(&crop.resampled(Some(Resample::Bicubic)), &img), &t("out").1);
        assert!(d < TOL, "rrc.{k}: max |diff| {d}");
    }
}

#[test]
fn interpolate_pos_embed_matches_mae_swin_and_timm() {
    let f = fixtures();
    for (k, t) in cases(&f, "pos_embed.") {
        let p = &t("params").1;
        let (extra, grid) = (p[0] as usize, (p[1] as usize, p[2] as usize));
        let (shape, got) = interpolate_pos_embed(t("in"), extra, grid).unwrap();
        assert_eq!(shape, t("out").0, "pos_embed.{k}");
        let d = max_diff(&got, &t("out").1);
        assert!(d < TOL, "pos_embed.{k}: max |diff| {d}");
    }
}

#[test]
fn relative_position_bias_tables_match_unilm_simmim_timm_and_swin() {
    let f = fixtures();
    for (name, method) in
        [("spline", RelPosResize::Spline), ("linear", RelPosResize::Linear), ("bicubic", RelPosResize::Bicubic)]
    {
        for (k, t) in cases(&f, &format!("rel_pos.{name}.")) {
            let p = &t("params").1;
            let (extra, window) = (p[0] as usize, (p[1] as usize, p[2] as usize));
            let (shape, got) = resize_rel_pos_bias_table(t("in"), extra, window, method).unwrap();
            assert_eq!(shape, t("out").0, "rel_pos.{name}.{k}");
            let d = max_diff(&got, &t("out").1);
            assert!(d < TOL, "rel_pos.{name}.{k}: max |diff| {d}");
            // The extra rows (BEiT's cls rows) are kept as they are.
            let n = t("in").1.len();
            assert_eq!(got[got.len() - extra * 3..], t("in").1[n - extra * 3..]);
        }
    }
}
