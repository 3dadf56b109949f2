//! Parity of the DALL-E dVAE encoder with a PyTorch re-implementation of openai/DALL-E's module
//! (fixtures from tools/make_dalle_fixtures.py: n_hid 16, 1 block per group, 32 tokens, 32 px,
//! weights written by tools/convert_dalle_encoder.py from a pickled whole module).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use mim::io::{TensorMap, read_safetensors};
use mim::models::dalle::{DalleEncoder, DalleEncoderConfig, map_pixels};

/// Largest tolerated absolute logit difference (logits are O(1); convolution order differs).
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn logits_and_ids_match_pytorch() {
    let device = Device::flex();
    let (encoder, cfg) = DalleEncoder::from_safetensors(&fixture("dalle_tiny_encoder.safetensors"), &device).unwrap();
    assert_eq!(cfg, DalleEncoderConfig { n_hid: 16, n_blk_per_group: 1, input_channels: 3, vocab_size: 32 });
    let io = read_safetensors(&fixture("dalle_tiny_io.safetensors")).unwrap();
    let (shape, pixels) = &io["pixels"];
    let x = Tensor::<4>::from_data(TensorData::new(pixels.clone(), shape.clone()), &device);

    let logits = encoder.forward(map_pixels(x.clone()));
    assert_eq!(logits.dims().to_vec(), io["logits"].0);
    let ours = logits.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let theirs = &io["logits"].1;
    let diff = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("logits: max |mim - torch| = {diff:.2e}");
    assert!(diff <= TOL, "logit difference {diff} > {TOL}");

    let ids = encoder.codebook_indices(x).unwrap();
    assert_eq!(ids.dims(), [2, 16]);
    let ids: Vec<i64> = ids.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
    let margins = top2_margins(theirs, &io["logits"].0);
    for (k, (&ours, &theirs)) in ids.iter().zip(&io["ids"].1).enumerate() {
        // An argmax decided by less than twice the measured logit error is a tie within float error.
        if margins[k] > 2.0 * diff {
            assert_eq!(ours, theirs as i64, "token {k}: id differs (torch margin {:.2e})", margins[k]);
        }
    }
    let decided = margins.iter().filter(|&&m| m > 2.0 * diff).count();
    eprintln!("ids: {decided} of {} compared and equal", margins.len());
    assert!(
        decided == margins.len(),
        "some argmax margins are below the float error: regenerate the fixture with another seed"
    );
}

/// Top-1 minus top-2 logit per token of `[B, V, h, w]` logits, in `[B, h*w]` order.
fn top2_margins(logits: &[f32], shape: &[usize]) -> Vec<f32> {
    let (b, v, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    (0..b * hw)
        .map(|t| {
            let mut col: Vec<f32> = (0..v).map(|c| logits[((t / hw) * v + c) * hw + t % hw]).collect();
            col.sort_by(|a, b| b.total_cmp(a));
            col[0] - col[1]
        })
        .collect()
}

#[test]
fn wrong_files_and_inputs_give_clear_errors() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let mut map: TensorMap = read_safetensors(&fixture("dalle_tiny_encoder.safetensors")).unwrap();
    map.remove("blocks.group_3.block_1.res_path.conv_2.w");
    let cfg = DalleEncoderConfig::from_tensors(&map).unwrap();
    let err = DalleEncoder::from_tensors(&map, &cfg, &device).err().unwrap().to_string();
    assert!(err.contains("blocks.group_3.block_1.res_path.conv_2.w' is missing"), "{err}");

    let not_dalle = tmp.path().join("mae.safetensors");
    let mae: TensorMap = [("patch_embed.proj.weight".to_string(), (vec![2, 2], vec![0.0; 4]))].into_iter().collect();
    std::fs::write(&not_dalle, mim::io::safetensors_bytes(&mae).unwrap()).unwrap();
    let err = format!("{:#}", DalleEncoder::from_safetensors(&not_dalle, &device).err().unwrap());
    assert!(err.contains("not a DALL-E encoder converted by tools/convert_dalle_encoder.py"), "{err}");

    let (encoder, _) = DalleEncoder::from_safetensors(&fixture("dalle_tiny_encoder.safetensors"), &device).unwrap();
    let err = encoder.codebook_indices(Tensor::zeros([1, 3, 20, 20], &device)).err().unwrap().to_string();
    assert!(err.contains("multiples of 8"), "{err}");
    let err = encoder.codebook_indices(Tensor::zeros([1, 1, 32, 32], &device)).err().unwrap().to_string();
    assert!(err.contains("3-channel"), "{err}");
}
