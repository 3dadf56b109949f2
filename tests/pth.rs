//! PyTorch `.pth` files through `mim::io::read_tensor_file`: the fixtures of
//! `tools/make_pth_fixtures.py` load with exactly the tensors, nested entry and ignored keys
//! recorded in `tests/fixtures/pth/expected.json`; files naming a global outside the allowlist are
//! refused without running anything; broken files are errors, never panics.

use std::path::{Path, PathBuf};

use mim::io::{TensorFormat, read_tensor_file, safetensors_bytes};
use pytorch_reader::PytorchReader;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth").join(name)
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_object().unwrap().clone()
}

fn check_fixture(name: &str, e: &Value) {
    let f = read_tensor_file(&fixture(name)).unwrap_or_else(|err| panic!("{name}: {err:#}"));
    assert_eq!(format!("{:?}", f.format), e["format"].as_str().unwrap(), "{name}");
    assert_eq!(f.nested.as_deref(), e["nested"].as_str(), "{name}");
    let ignored: Vec<&str> = e["ignored"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(f.ignored, ignored, "{name}");
    assert!(f.metadata.is_empty());
    let want = e["tensors"].as_object().unwrap();
    let names: Vec<&String> = want.keys().collect();
    assert_eq!(f.tensors.keys().collect::<Vec<_>>(), names, "{name}");
    for (k, t) in want {
        let (shape, values) = &f.tensors[k];
        let want_shape: Vec<usize> =
            t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, &want_shape, "{name}: {k}");
        // Every value is an f32 (or narrower) written exactly by Python's float repr.
        let want_values: Vec<f32> =
            t["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let same = values.len() == want_values.len()
            && values.iter().zip(&want_values).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: {k} ({}) is {values:?}, expected {want_values:?}", t["dtype"]);
    }
}

#[test]
fn every_fixture_loads_with_the_recorded_tensors() {
    let e = expected();
    let loadable: Vec<&String> = e.keys().filter(|k| e[*k].get("refused").is_none()).collect();
    assert_eq!(loadable.len(), 8);
    for name in loadable {
        check_fixture(name, &e[name]);
    }
}

#[test]
fn strided_half_and_integer_tensors_are_converted_as_torch_stored_them() {
    let f = read_tensor_file(&fixture("train_checkpoint.pth")).unwrap();
    // arange(12).reshape(3, 4).t(): saved as the [3, 4] storage with strides (1, 4).
    assert_eq!(f.tensors["t"], (vec![4, 3], vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]));
    assert_eq!(f.tensors["offset"], (vec![4], vec![3., 4., 5., 6.]));
    assert_eq!(f.tensors["index"], (vec![2, 3], vec![0., 1., 2., 3., 4., 5.]));
    assert_eq!(f.tensors["half"].1, [-2.0, -1.2001953, -0.39990234, 0.39990234, 1.2001953, 2.0]);
    assert_eq!(f.tensors["bf16"].1, [1.5, -0.25, 299008.0]);
}

#[test]
fn a_hugging_face_bin_and_a_safetensors_file_go_through_the_same_entry() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("pytorch_model.bin");
    std::fs::copy(fixture("ddp.pth"), &bin).unwrap();
    let f = read_tensor_file(&bin).unwrap();
    assert_eq!((f.format, f.tensors.len()), (TensorFormat::PthZip, 5));
    assert!(f.tensors.contains_key("linear.weight"), "{:?}", f.tensors.keys());

    // A safetensors file named .pth: the bytes decide, not the extension.
    let st = dir.path().join("weights.pth");
    let mut map = mim::io::TensorMap::new();
    map.insert("w".into(), (vec![2], vec![1.0, -2.0]));
    std::fs::write(&st, safetensors_bytes(&map).unwrap()).unwrap();
    let f = read_tensor_file(&st).unwrap();
    assert_eq!((f.format, f.tensors, f.nested, f.ignored), (TensorFormat::Safetensors, map, None, vec![]));
}

#[test]
fn files_naming_other_globals_are_refused_and_nothing_runs() {
    let marker = Path::new("/tmp/mim-pwned");
    let _ = std::fs::remove_file(marker);
    let e = expected();
    let evil: Vec<&String> = e.keys().filter(|k| e[*k].get("refused").is_some()).collect();
    assert_eq!(evil.len(), 3);
    for name in evil {
        let err = format!("{:#}", read_tensor_file(&fixture(name)).unwrap_err());
        let global = e[name]["refused"].as_str().unwrap();
        assert!(err.contains(&format!("names the Python global '{global}'")), "{name}: {err}");
        assert!(err.contains("nothing was executed") && err.contains("torch.save(model.state_dict()"), "{err}");
    }
    assert!(!marker.exists(), "a payload ran");
}

#[test]
fn pytorch_reader_alone_loads_os_system_and_stops_at_yacs_and_21_character_folders() {
    // Why mim scans the globals first: the reader keeps the os.system call as an opaque value.
    assert!(PytorchReader::new(fixture("evil.pth")).is_ok());
    // Why mim reads these through a rewritten copy. If either loads, pytorch-reader (or the zip
    // crate) has fixed it, and the copy can go.
    let err = PytorchReader::new(fixture("yacs_config.pth")).unwrap_err().to_string();
    assert!(err.contains("SetItem"), "{err}");
    let err = PytorchReader::new(fixture("torch_folder_21_chars.pth")).unwrap_err().to_string();
    assert!(err.contains("Central Directory"), "{err}");
}

#[test]
fn truncated_and_random_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.pth");
    for source in ["train_checkpoint.pth", "legacy.pth"] {
        let bytes = std::fs::read(fixture(source)).unwrap();
        for len in [1, 10, 100, bytes.len() / 2, bytes.len() - 30] {
            std::fs::write(&f, &bytes[..len]).unwrap();
            let err = format!("{:#}", read_tensor_file(&f).unwrap_err());
            assert!(err.contains("broken.pth"), "{source} cut to {len}: {err}");
        }
    }
    let zip = std::fs::read(fixture("ddp.pth")).unwrap();
    std::fs::write(&f, &zip[..zip.len() / 2]).unwrap();
    let err = format!("{:#}", read_tensor_file(&f).unwrap_err());
    assert!(err.contains("not a valid one"), "{err}");

    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&f, &random).unwrap();
    let err = format!("{:#}", read_tensor_file(&f).unwrap_err());
    assert!(err.contains("PyTorch zip") && err.contains("legacy") && err.contains("safetensors"), "{err}");
    std::fs::write(&f, b"").unwrap();
    assert!(read_tensor_file(&f).is_err());
}
