//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use super::{Dataset, FASHION_MNIST_CLASSES, Split, Storage};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

fn stem(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    // Both the dotted (`train-images.idx3-ubyte`) and dashed spellings are common.
    [name.to_string(), name.replacen("-idx", ".idx", 1)]
        .iter()
        .flat_map(|n| [dir.join(n), dir.join(format!("{n}.gz"))])
        .find(|p| p.is_file())
}

/// Whether `path` is an IDX image file or a folder holding IDX files.
pub fn detect(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if path.is_file() {
        return name.contains("idx3-ubyte");
    }
    path.is_dir() && (find(path, "train-images-idx3-ubyte").is_some() || find(path, "t10k-images-idx3-ubyte").is_some())
}

/// Reads a whole file, gunzipping `.gz`. A compressed file is only inflated as far as its header
/// promises (plus one byte, so trailing data is still seen), so a small gzip bomb cannot fill memory.
fn read_all(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let bad_gz = || format!("'{}' is not a valid gzip file (truncated or damaged): re-download it", path.display());
        let mut gz = flate2::read::GzDecoder::new(&raw[..]);
        let mut out = Vec::new();
        (&mut gz).take(4).read_to_end(&mut out).with_context(bad_gz)?;
        if out.len() == 4 {
            let ndim = out[3] as u64;
            (&mut gz).take(4 * ndim).read_to_end(&mut out).with_context(bad_gz)?;
            // An impossible header is left for `parse` to name; here it only bounds the inflation.
            let body = payload_len(&out[4..]).unwrap_or(0);
            gz.take(body.saturating_add(1)).read_to_end(&mut out).with_context(bad_gz)?;
        }
        return Ok(out);
    }
    Ok(raw)
}

/// The payload size promised by big-endian u32 dimensions, `None` when the product overflows u64.
fn payload_len(dims: &[u8]) -> Option<u64> {
    dims.chunks_exact(4).try_fold(1u64, |acc, d| acc.checked_mul(u32::from_be_bytes(d.try_into().unwrap()) as u64))
}

/// Parses an IDX `u8` file: returns its dimensions and payload, checking magic and length.
pub fn parse(bytes: &[u8], expected_magic: u32, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let what = if expected_magic == IMAGES_MAGIC { "images (magic 0x00000803)" } else { "labels (magic 0x00000801)" };
    ensure!(
        bytes.len() >= 4,
        "corrupt IDX header in '{}': file has only {} bytes; re-download it",
        path.display(),
        bytes.len()
    );
    let magic = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    if magic != expected_magic {
        bail!(
            "corrupt IDX header in '{}': magic 0x{magic:08x}, expected IDX u8 {what}; the file is damaged or not an IDX file, re-download it",
            path.display()
        );
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    ensure!(
        bytes.len() >= header,
        "corrupt IDX header in '{}': truncated before its {ndim} dimensions; re-download it",
        path.display()
    );
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    // A zero dimension gives images of no pixels (or no images), which later code cannot use.
    ensure!(
        dims.iter().all(|&d| d > 0),
        "corrupt IDX header in '{}': dimensions {dims:?} include a zero; the file is damaged, re-download it",
        path.display()
    );
    let body = &bytes[header..];
    // The product is untrusted: checked in u64 (three u32 can overflow it) and compared with the
    // bytes that really follow, before anything is sliced or allocated.
    let expected = payload_len(&bytes[4..header]).filter(|&n| n <= body.len() as u64);
    let Some(expected) = expected else {
        bail!(
            "'{}' is truncated or corrupted: its header promises {} bytes of {dims:?} but only {} follow; re-download it",
            path.display(),
            dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x "),
            body.len()
        );
    };
    Ok((dims, body[..expected as usize].to_vec()))
}

/// Opens the split of an IDX dataset at `path` (a folder, or an images file with its labels beside it).
pub fn open(path: &Path, split: Split) -> Result<Dataset> {
    let (images, labels) = if path.is_file() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let labels = path.with_file_name(name.replace("images", "labels").replace("idx3", "idx1"));
        (path.to_path_buf(), labels.is_file().then_some(labels))
    } else {
        let s = stem(split);
        let images = find(path, &format!("{s}-images-idx3-ubyte")).with_context(|| {
            format!(
                "no {s}-images-idx3-ubyte[.gz] in '{}' for the {split:?} split: pick a split that exists",
                path.display()
            )
        })?;
        (images, find(path, &format!("{s}-labels-idx1-ubyte")))
    };
    let (dims, pixels) = parse(&read_all(&images)?, IMAGES_MAGIC, &images)?;
    let n = dims[0];
    let fashion = images.to_string_lossy().contains("fashion");
    let labelled = labels.is_some();
    let labels = match &labels {
        Some(p) => {
            let (ld, l) = parse(&read_all(p)?, LABELS_MAGIC, p)?;
            ensure!(ld[0] == n, "'{}' has {} labels for {n} images in '{}'", p.display(), ld[0], images.display());
            // Labels index the 10 classes (a classifier's one-hot, k-NN votes): a larger one is damage.
            if let Some(bad) = l.iter().position(|&v| v >= 10) {
                bail!(
                    "'{}' has label {} at index {bad}, outside the 10 classes 0-9: the file is damaged, re-download it",
                    p.display(),
                    l[bad]
                );
            }
            l.into_iter().map(u32::from).collect()
        }
        None => vec![0; n],
    };
    let (mean, std) = if fashion { (0.2860, 0.3530) } else { (0.1307, 0.3081) };
    Ok(Dataset {
        name: format!("IDX {} ({n} images {}x{})", images.display(), dims[1], dims[2]),
        channels: 1,
        storage: Storage::Memory { width: dims[2], height: dims[1], pixels },
        labels,
        // Without its labels file the split has images only: no classes (pretraining only).
        classes: if !labelled {
            Vec::new()
        } else if fashion {
            FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect()
        } else {
            (0..10).map(|i| i.to_string()).collect()
        },
        mean: vec![mean],
        std: vec![std],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_magic_and_truncation_are_named() {
        let p = Path::new("x-images-idx3-ubyte");
        let err = parse(&[0, 0, 8, 1, 0, 0, 0, 1], IMAGES_MAGIC, p).unwrap_err().to_string();
        assert!(err.contains("corrupt IDX header"), "{err}");
        let mut bytes = vec![0, 0, 8, 3];
        for d in [2u32, 2, 2] {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend([1, 2, 3]);
        let err = parse(&bytes, IMAGES_MAGIC, p).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        bytes.extend([4, 5, 6, 7, 8]);
        let (dims, body) = parse(&bytes, IMAGES_MAGIC, p).unwrap();
        assert_eq!(dims, vec![2, 2, 2]);
        assert_eq!(body, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }

    fn header(dims: [u32; 3]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        dims.iter().for_each(|d| b.extend(d.to_be_bytes()));
        b
    }

    #[test]
    fn overflowing_and_zero_dimensions_are_refused() {
        let p = Path::new("x-images-idx3-ubyte");
        // The crash input: 31232 x 2^30 x (7 x 2^26) wraps to 0 in a 64-bit product.
        let mut wraps = header([31232, 1 << 30, 7 << 26]);
        wraps.extend([0u8; 64]);
        let err = parse(&wraps, IMAGES_MAGIC, p).unwrap_err().to_string();
        assert!(err.contains("truncated or corrupted"), "{err}");
        for dims in [[u32::MAX; 3], [1 << 20, 1 << 20, 1 << 20]] {
            let err = parse(&header(dims), IMAGES_MAGIC, p).unwrap_err().to_string();
            assert!(err.contains("truncated or corrupted"), "{err}");
        }
        for dims in [[64, 28, 0], [64, 0, 28], [0, 28, 28]] {
            let mut b = header(dims);
            b.extend([0u8; 64 * 28]);
            let err = parse(&b, IMAGES_MAGIC, p).unwrap_err().to_string();
            assert!(err.contains("include a zero"), "{err}");
        }
    }

    #[test]
    fn gzip_is_inflated_only_as_far_as_the_header_promises() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&header([2, 2, 2])).unwrap();
        gz.write_all(&vec![7u8; 1 << 20]).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let bytes = read_all(&path).unwrap();
        assert_eq!(bytes.len(), 16 + 8 + 1);
        let (dims, body) = parse(&bytes, IMAGES_MAGIC, &path).unwrap();
        assert_eq!((dims, body), (vec![2, 2, 2], vec![7u8; 8]));
    }
}
