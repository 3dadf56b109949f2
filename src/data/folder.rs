//! Image folders in ImageNet layout: `root/{train,val}/CLASS/*.{png,jpg,jpeg}`, or `root/CLASS/*`
//! directly (one folder for both splits: pretraining only). Images are decoded on demand; the
//! classes take turns in their order (a0, b0, a1, b1, ...); hidden files and folders are left out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::{Dataset, Image, Split, Storage};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The entries of `dir`, sorted, without hidden ones (`.ipynb_checkpoints`, macOS's `._x.png`).
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list '{}'", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    v.sort();
    Ok(v)
}

/// Lists the split's classes and images (sorted, so the order is the same on every machine).
pub fn open(path: &Path, split: Split) -> Result<Dataset> {
    let sub = match split {
        Split::Train => ["train"].as_slice(),
        Split::Test => ["val", "test"].as_slice(),
    };
    let root = sub.iter().map(|s| path.join(s)).find(|p| p.is_dir());
    // A folder split into train/ has its test split in val/ or test/, never the folder itself
    // (whose one "class" would be train/).
    ensure!(
        root.is_some() || split == Split::Train || !path.join("train").is_dir(),
        "'{}' has a train/ folder but no val/ or test/ beside it for the test split: add one (class folders \
         as in train/)",
        path.display()
    );
    let root = root.unwrap_or_else(|| path.to_path_buf());
    let class_dirs: Vec<PathBuf> = sorted_entries(&root)?.into_iter().filter(|p| p.is_dir()).collect();
    let mut per_class = Vec::new();
    let mut classes = Vec::new();
    for dir in &class_dirs {
        let images: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| is_image(p)).collect();
        // A class without images is a class all the same: the splits must agree on the labels.
        per_class.push(images);
        classes.push(dir.file_name().unwrap().to_string_lossy().to_string());
    }
    // Class by class in turn (a0, b0, c0, a1, ...), so that the first N images (--max-images) hold
    // every class, as the first N of a shuffled IDX or CIFAR file do.
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for k in 0..per_class.iter().map(Vec::len).max().unwrap_or(0) {
        for (c, images) in per_class.iter().enumerate() {
            if let Some(f) = images.get(k) {
                files.push(f.clone());
                labels.push(c as u32);
            }
        }
    }
    ensure!(
        !files.is_empty(),
        "no PNG/JPEG images found in class sub-folders of '{}': an image folder needs root/CLASS/image.png \
         (optionally under root/train and root/val)",
        root.display()
    );
    // Grey when the first image of every class is (a header read each): a folder of grey PNGs is
    // 1-channel data, as the same images in IDX files; any colour makes it RGB.
    let mut colour = false;
    for first in per_class.iter().filter_map(|images| images.first()) {
        if is_colour(first)? {
            colour = true;
            break;
        }
    }
    // ImageNet's statistics, averaged over the channels for grey images.
    let (channels, mean, std) =
        if colour { (3, vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]) } else { (1, vec![0.449], vec![0.225]) };
    Ok(Dataset {
        name: format!("image folder {} ({} images, {} classes)", root.display(), files.len(), classes.len()),
        channels,
        storage: Storage::Files(files),
        labels,
        classes,
        mean,
        std,
    })
}

/// Whether the image file at `path` has colour channels (read from its header alone): a 1-channel
/// model sees such an image converted to greyscale by [`decode`].
pub fn is_colour(path: &Path) -> Result<bool> {
    use image::ImageDecoder;
    let decoder = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image '{}'", path.display()))?
        .with_guessed_format()?
        .into_decoder()
        .with_context(|| format!("cannot read the header of image '{}'", path.display()))?;
    Ok(decoder.color_type().has_color())
}

/// Decodes an image file to `channels` (1 = grey, 3 = RGB).
pub fn decode(path: &Path, channels: usize) -> Result<Image> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image '{}'", path.display()))?
        .with_guessed_format()?
        .decode()
        .with_context(|| {
            format!(
                "cannot decode image '{}': the file is unreadable or truncated; remove or re-export it",
                path.display()
            )
        })?;
    Ok(to_channels(img, channels))
}

/// Decodes an image held in memory (PNG or JPEG) to `channels` (1 = grey, 3 = RGB).
pub fn decode_bytes(bytes: &[u8], channels: usize) -> Result<Image> {
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, image::ImageFormat::Png | image::ImageFormat::Jpeg))
        .context("not a PNG or JPEG image: convert it to one of these formats")?;
    let img = image::load_from_memory_with_format(bytes, format)
        .context("cannot decode the image: the file is unreadable or truncated")?;
    Ok(to_channels(img, channels))
}

fn to_channels(img: image::DynamicImage, channels: usize) -> Image {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let pixels = if channels == 1 { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() };
    Image { width, height, channels, pixels }
}
