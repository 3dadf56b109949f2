//! Pictures: MAE reconstruction grids (the paper's figure 2 layout), side-by-side panels (tokenizer
//! reconstructions), mask samples and loss curves. [`crate::reconstruct`] draws them for a
//! pretrained model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use image::{Rgb, RgbImage};

use crate::data::augment::Transform;
use crate::data::loader::{Batch, rng_for};
use crate::data::{Dataset, Split};
use crate::masking::{BoolMask, Mask};
use crate::models::mae::MaskedAutoencoder;
use crate::models::pretrain::ModelConfig;

/// Side of the grey used for removed patches in the "masked" panel.
const MASK_GREY: u8 = 128;

/// One image's panels, each `[C * H * W]` in `[0, 1]` after undoing the dataset normalisation.
#[derive(Debug, Clone)]
pub struct ReconstructionRow {
    /// Input image.
    pub original: Vec<f32>,
    /// 1 where the pixel's patch was removed, `[H * W]`.
    pub removed: Vec<bool>,
    /// Model prediction for every patch.
    pub reconstruction: Vec<f32>,
    /// Visible patches from the input, removed ones from the prediction.
    pub pasted: Vec<f32>,
}

/// Runs the model on `imgs: [B, C, H, W]` (normalised with `mean`/`std`) under `mask` and returns
/// the panels of each image, un-normalised to `[0, 1]` (an error for a token-target MAE).
pub fn reconstruct(
    model: &MaskedAutoencoder,
    imgs: Tensor<4>,
    mask: &Mask,
    mean: &[f32],
    std: &[f32],
) -> anyhow::Result<Vec<ReconstructionRow>> {
    let pred = model.predict_pixels(imgs.clone(), mask)?;
    let removed: Vec<bool> = mask.mask.iter().map(|&m| m > 0.5).collect();
    Ok(reconstruction_rows(imgs, pred, &removed, model.patch_size(), mean, std))
}

/// The panels of each image from inputs and predictions `[B, C, H, W]` (both normalised with
/// `mean`/`std`) and the removed patches `[B * L]` of a `p`-pixel patch grid.
pub fn reconstruction_rows(
    imgs: Tensor<4>,
    pred: Tensor<4>,
    removed: &[bool],
    p: usize,
    mean: &[f32],
    std: &[f32],
) -> Vec<ReconstructionRow> {
    let [b, c, h, w] = imgs.dims();
    let pred: Vec<f32> = pred.into_data().try_to_vec::<f32>().expect("f32 prediction");
    let orig: Vec<f32> = imgs.into_data().try_to_vec::<f32>().expect("f32 images");
    let gw = w / p;
    let l = (h / p) * gw;
    let per = c * h * w;
    let denorm = |v: f32, k: usize| (v * std[k] + mean[k]).clamp(0.0, 1.0);
    (0..b)
        .map(|i| {
            let removed: Vec<bool> = (0..h * w).map(|px| removed[i * l + (px / w / p) * gw + (px % w) / p]).collect();
            let (mut o, mut r, mut s) = (vec![0.0; per], vec![0.0; per], vec![0.0; per]);
            for k in 0..c {
                for (px, &gone) in removed.iter().enumerate() {
                    let j = k * h * w + px;
                    o[j] = denorm(orig[i * per + j], k);
                    r[j] = denorm(pred[i * per + j], k);
                    s[j] = if gone { r[j] } else { o[j] };
                }
            }
            ReconstructionRow { original: o, removed, reconstruction: r, pasted: s }
        })
        .collect()
}

/// The column titles of [`grid_image`].
pub const RECONSTRUCTION_COLUMNS: [&str; 4] = ["original", "masked", "reconstruction", "reconstruction\n+ visible"];

/// Draws rows of `original | masked | reconstruction | reconstruction + visible`, each panel
/// scaled up `scale` times, with a 2-pixel white gutter; `title` above, the column titles under it
/// and each row's label (`row_labels`, e.g. the class) beside it. An empty `title` draws the bare
/// panels.
pub fn grid_image(
    rows: &[ReconstructionRow],
    (c, h, w): (usize, usize, usize),
    scale: usize,
    title: &str,
    row_labels: &[String],
) -> Result<RgbImage> {
    let mut img = panel_canvas(4, rows.len(), h, w, scale);
    for (r, row) in rows.iter().enumerate() {
        draw_panel(&mut img, r, 0, h, w, scale, |y, x| channels(&row.original, c, h, w, y, x));
        draw_panel(&mut img, r, 1, h, w, scale, |y, x| {
            if row.removed[y * w + x] { [MASK_GREY; 3] } else { channels(&row.original, c, h, w, y, x) }
        });
        draw_panel(&mut img, r, 2, h, w, scale, |y, x| channels(&row.reconstruction, c, h, w, y, x));
        draw_panel(&mut img, r, 3, h, w, scale, |y, x| channels(&row.pasted, c, h, w, y, x));
    }
    if title.is_empty() {
        return Ok(img);
    }
    let captions = Captions {
        title: title.to_string(),
        columns: RECONSTRUCTION_COLUMNS.map(String::from).to_vec(),
        rows: row_labels.to_vec(),
    };
    captioned(img, &captions, &panel_grid(4, rows.len(), h * scale, w * scale, GUTTER))
}

/// Draws rows of images side by side (e.g. a tokenizer's `original | reconstruction`), each image
/// `[C * H * W]` in `[0, 1]`, scaled up `scale` times, with a 2-pixel white gutter, under
/// `captions` (one column title per image of a row).
pub fn panels_image(
    rows: &[Vec<Vec<f32>>],
    (c, h, w): (usize, usize, usize),
    scale: usize,
    captions: &Captions,
) -> Result<RgbImage> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut img = panel_canvas(cols, rows.len(), h, w, scale);
    for (r, row) in rows.iter().enumerate() {
        for (p, v) in row.iter().enumerate() {
            draw_panel(&mut img, r, p, h, w, scale, |y, x| channels(v, c, h, w, y, x));
        }
    }
    captioned(img, captions, &panel_grid(cols, rows.len(), h * scale, w * scale, GUTTER))
}

/// Undoes the per-channel normalisation of `[C * H * W]` values and clamps them to `[0, 1]`.
pub fn denormalize(values: &[f32], mean: &[f32], std: &[f32]) -> Vec<f32> {
    let per = values.len() / mean.len();
    values.iter().enumerate().map(|(i, &v)| (v * std[i / per] + mean[i / per]).clamp(0.0, 1.0)).collect()
}

const GUTTER: usize = 2;

fn panel_canvas(cols: usize, rows: usize, h: usize, w: usize, scale: usize) -> RgbImage {
    let (pw, ph) = (w * scale, h * scale);
    RgbImage::from_pixel(
        (cols * (pw + GUTTER) + GUTTER) as u32,
        (rows * (ph + GUTTER) + GUTTER) as u32,
        Rgb([255, 255, 255]),
    )
}

/// RGB of pixel `(y, x)` of a `[C * H * W]` image in `[0, 1]` (grey repeated when C = 1).
fn channels(v: &[f32], c: usize, h: usize, w: usize, y: usize, x: usize) -> [u8; 3] {
    [0, 1, 2].map(|k| (v[(k.min(c - 1) * h + y) * w + x] * 255.0).round() as u8)
}

fn draw_panel(
    img: &mut RgbImage,
    row: usize,
    col: usize,
    h: usize,
    w: usize,
    scale: usize,
    pixel: impl Fn(usize, usize) -> [u8; 3],
) {
    let (x0, y0) = (GUTTER + col * (w * scale + GUTTER), GUTTER + row * (h * scale + GUTTER));
    for y in 0..h * scale {
        for x in 0..w * scale {
            img.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb(pixel(y / scale, x / scale)));
        }
    }
}

/// Draws sample masks: one row per [`BoolMask`] (e.g. one per masking strategy), one panel per
/// image, each patch a `cell x cell` square, masked patches dark and visible ones light, with a
/// 1-pixel line between patches and a 4-pixel white gutter between panels; `title` above and each
/// row's label (`row_labels`, e.g. the strategy) beside it.
pub fn mask_grid_image(rows: &[&BoolMask], cell: usize, title: &str, row_labels: &[String]) -> Result<RgbImage> {
    let gap = 4;
    let panel = |g: (usize, usize)| (g.1 * (cell + 1) + 1, g.0 * (cell + 1) + 1);
    let width = rows.iter().map(|m| m.batch * (panel(m.grid).0 + gap)).max().unwrap_or(0) + gap;
    let height = rows.iter().map(|m| panel(m.grid).1 + gap).sum::<usize>() + gap;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    let mut y0 = gap;
    for m in rows {
        let (pw, ph) = panel(m.grid);
        for b in 0..m.batch {
            let x0 = gap + b * (pw + gap);
            for y in 0..ph {
                for x in 0..pw {
                    let on_line = x % (cell + 1) == 0 || y % (cell + 1) == 0;
                    let v = if on_line {
                        160
                    } else if m.row(b)[(y / (cell + 1)) * m.grid.1 + x / (cell + 1)] {
                        40
                    } else {
                        235
                    };
                    img.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb([v; 3]));
                }
            }
        }
        y0 += ph + gap;
    }
    let mut centres = Vec::new();
    let mut y = gap;
    for m in rows {
        centres.push((y + panel(m.grid).1 / 2) as u32);
        y += panel(m.grid).1 + gap;
    }
    let captions = Captions { title: title.to_string(), columns: Vec::new(), rows: row_labels.to_vec() };
    captioned(img, &captions, &Layout { columns: Vec::new(), column_width: 0, rows: centres })
}

/// Draws attention maps over an image: one row per layer, one column per head and a last one for
/// the mean over heads. `image` is `[C * H * W]` in `[0, 1]`; `maps[layer][head]` holds one weight
/// per patch of the layer's `grids[layer]`-a-side patch grid (e.g. the [CLS] query's attention; a
/// Swin stage's merged patches). Each panel shows the
/// image dimmed under a heat colouring of its map, from the map's own minimum (black) to its maximum
/// (white).
pub fn attention_image(
    image: &[f32],
    (c, h, w): (usize, usize, usize),
    maps: &[Vec<Vec<f32>>],
    grids: &[usize],
    scale: usize,
    title: &str,
) -> Result<RgbImage> {
    // Layers may differ in heads (Swin's stages): the mean takes the last column of every row.
    let heads = maps.iter().map(Vec::len).max().unwrap_or(0);
    let mut img = panel_canvas(heads + 1, maps.len(), h, w, scale);
    for (layer, per_head) in maps.iter().enumerate() {
        let grid = grids[layer];
        let (ph, pw) = (h.div_ceil(grid), w.div_ceil(grid));
        let n = per_head.len();
        let mean: Vec<f32> =
            (0..grid * grid).map(|i| per_head.iter().map(|m| m[i]).sum::<f32>() / n.max(1) as f32).collect();
        let columns = per_head.iter().enumerate().chain(std::iter::once((heads, &mean)));
        for (col, map) in columns {
            // From the map's least weight to its largest: a window's nearly even attention (Swin)
            // still shows its structure.
            let low = map.iter().copied().fold(f32::MAX, f32::min);
            let range = (map.iter().copied().fold(f32::MIN, f32::max) - low).max(f32::MIN_POSITIVE);
            draw_panel(&mut img, layer, col, h, w, scale, |y, x| {
                let heat = (map[((y / ph).min(grid - 1)) * grid + (x / pw).min(grid - 1)] - low) / range;
                let base = channels(image, c, h, w, y, x);
                let grey = (base[0] as f32 + base[1] as f32 + base[2] as f32) / 3.0;
                // Black -> red -> yellow -> white as the weight grows, over the image at 40%.
                let hot =
                    [(heat * 3.0).min(1.0), (heat * 3.0 - 1.0).clamp(0.0, 1.0), (heat * 3.0 - 2.0).clamp(0.0, 1.0)];
                hot.map(|v| (0.4 * grey + 0.6 * 255.0 * v).round() as u8)
            });
        }
    }
    let mut columns: Vec<String> = (1..=heads).map(|i| format!("head {i}")).collect();
    columns.push("mean".into());
    let captions =
        Captions { title: title.to_string(), columns, rows: (1..=maps.len()).map(|i| format!("layer {i}")).collect() };
    captioned(img, &captions, &panel_grid(heads + 1, maps.len(), h * scale, w * scale, GUTTER))
}

/// Text around a picture of panels: a title above it, a title over each column of panels and a
/// label beside each row (an empty string leaves its place blank; `\n` starts a second line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Captions {
    /// Above everything: what the picture shows (method, epoch, mask strategy).
    pub title: String,
    /// One per column of panels, left to right.
    pub columns: Vec<String>,
    /// One per row of panels, top to bottom.
    pub rows: Vec<String>,
}

/// Where a picture's panels are: the centre of each column (x) and row (y), and the column pitch.
struct Layout {
    columns: Vec<u32>,
    column_width: u32,
    rows: Vec<u32>,
}

/// The layout of a `cols x rows` grid of `ph x pw` panels with `gutter` pixels around each.
fn panel_grid(cols: usize, rows: usize, ph: usize, pw: usize, gutter: usize) -> Layout {
    Layout {
        columns: (0..cols).map(|i| (gutter + i * (pw + gutter) + pw / 2) as u32).collect(),
        column_width: pw as u32,
        rows: (0..rows).map(|i| (gutter + i * (ph + gutter) + ph / 2) as u32).collect(),
    }
}

/// `img` inside a white margin holding `captions`: the title and the column titles above, the row
/// labels to the left. Column titles shrink (down to 8 px) to fit their column.
fn captioned(img: RgbImage, captions: &Captions, layout: &Layout) -> Result<RgbImage> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    register_font();
    let size = |text: &str, px: u32| -> Result<(u32, u32)> {
        let font = ("sans-serif", px).into_font();
        text.lines().try_fold((0, 0), |(w, h), line| {
            let (lw, lh) = font.box_size(line).map_err(|e| anyhow::anyhow!("cannot measure '{line}': {e:?}"))?;
            Ok((w.max(lw), h + lh))
        })
    };
    let title_px = 16;
    let mut column_px = 13;
    while column_px > 8
        && captions.columns.iter().try_fold(0, |w, t| Ok::<_, anyhow::Error>(size(t, column_px)?.0.max(w)))?
            > layout.column_width.saturating_sub(4)
    {
        column_px -= 1;
    }
    let line = |px: u32| px + px / 3;
    let title_h = if captions.title.is_empty() { 0 } else { line(title_px) + 6 };
    let lines = captions.columns.iter().map(|t| t.lines().count() as u32).max().unwrap_or(0);
    let columns_h = if lines == 0 { 0 } else { lines * line(column_px) + 4 };
    let row_px = 13;
    let left = captions.rows.iter().try_fold(0, |w, t| Ok::<_, anyhow::Error>(size(t, row_px)?.0.max(w)))?;
    let left = if left == 0 { 0 } else { left + 10 };
    let top = title_h + columns_h;
    let width = (img.width() + left).max(size(&captions.title, title_px)?.0 * 11 / 10 + 16);
    // Labels and panels centred under a title wider than they are.
    let left = left + (width - img.width() - left) / 2;
    let mut out = RgbImage::from_pixel(width, img.height() + top, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &img, left as i64, top as i64);
    let (w, h) = out.dimensions();
    {
        let root = BitMapBackend::with_buffer(&mut out, (w, h)).into_drawing_area();
        let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("cannot draw captions: {e:?}");
        let text = |t: &str, (x, y): (u32, u32), px: u32, h_pos: HPos| -> Result<()> {
            let n = t.lines().count() as u32;
            for (i, l) in t.lines().enumerate() {
                let y = y + i as u32 * line(px) - (n - 1) * line(px) / 2;
                let style = ("sans-serif", px).into_font().color(&BLACK).pos(Pos::new(h_pos, VPos::Center));
                root.draw(&Text::new(l, (x as i32, y as i32), style)).map_err(|e| err(&e))?;
            }
            Ok(())
        };
        if title_h > 0 {
            text(&captions.title, (width / 2, line(title_px) / 2 + 3), title_px, HPos::Center)?;
        }
        for (t, &x) in captions.columns.iter().zip(&layout.columns) {
            text(t, (left + x, title_h + columns_h / 2), column_px, HPos::Center)?;
        }
        for (t, &y) in captions.rows.iter().zip(&layout.rows) {
            text(t, (left.saturating_sub(6), top + y), row_px, HPos::Right)?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

/// Which images to reconstruct.
#[derive(Debug, Clone)]
pub enum Images {
    /// Dataset images by index; `data: None` means the dataset the model was trained on.
    Dataset {
        /// Dataset path.
        data: Option<PathBuf>,
        /// Split the indices refer to.
        split: Split,
        /// Dataset indices.
        indices: Vec<usize>,
    },
    /// Image files: the shorter side resized to the model's input (bicubic, antialiased), the
    /// centre cropped ([`Transform::CenterCrop`] with `crop_pct` 1, the whole shorter side).
    Files {
        /// The files.
        files: Vec<PathBuf>,
        /// Dataset whose statistics normalise the files (default: the training data; where
        /// neither opens, mean 0.5 and std 0.25).
        data: Option<PathBuf>,
    },
}

/// Images loaded for a model: the batch (normalised), each image's name, and the normalisation's
/// per-channel mean and std.
pub type LoadedImages = (Batch, Vec<String>, Vec<f32>, Vec<f32>);

/// Loads `images` at the input size of a model of architecture `cfg`: the batch (normalised), each
/// image's name, and the normalisation's per-channel mean and std. Dataset images default to the
/// data the model was `trained_on`; `normalization` (weights from elsewhere) replaces the dataset's
/// statistics. Greyscale dataset images for an RGB model fill all three channels.
pub fn load_images(
    images: &Images,
    cfg: &ModelConfig,
    trained_on: Option<&Path>,
    normalization: Option<&(Vec<f32>, Vec<f32>)>,
) -> Result<LoadedImages> {
    match images {
        Images::Dataset { data, split, indices } => {
            let Some(path) = data.as_deref().or(trained_on) else {
                bail!("pass --data (or --images) to say which images to reconstruct");
            };
            let ds = Dataset::open(path, *split)?;
            if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
                bail!(
                    "index {bad} is out of range: the {split:?} split of '{}' has {} images",
                    path.display(),
                    ds.len()
                );
            }
            load_dataset_images(&ds, indices, cfg, normalization)
                .with_context(|| format!("images of '{}'", path.display()))
        }
        Images::Files { files, data } => {
            let c = cfg.in_chans();
            let stats = data.as_deref().or(trained_on).and_then(|d| Dataset::open(d, Split::Train).ok());
            let (mean, std) = match (normalization, stats) {
                (Some(n), _) => n.clone(),
                (None, Some(d)) => (d.mean, d.std),
                (None, None) => (vec![0.5; c], vec![0.25; c]),
            };
            let decoded = files.iter().map(|p| crate::data::folder::decode(p, c)).collect::<Result<Vec<_>>>()?;
            let batch = decoded_batch(&decoded, cfg.img_size(), &mean, &std);
            Ok((batch, files.iter().map(|p| p.display().to_string()).collect(), mean, std))
        }
    }
}

/// Images `indices` of an opened dataset at the input size of a model of architecture `cfg`, as
/// [`load_images`] loads them (`normalization` replaces the dataset's statistics; greyscale images
/// for an RGB model fill all three channels).
pub fn load_dataset_images(
    ds: &Dataset,
    indices: &[usize],
    cfg: &ModelConfig,
    normalization: Option<&(Vec<f32>, Vec<f32>)>,
) -> Result<LoadedImages> {
    let (side, c) = (cfg.img_size(), cfg.in_chans());
    // Weights from elsewhere expect their own normalisation, not this dataset's.
    let (mean, std) = normalization.cloned().unwrap_or_else(|| (ds.mean.clone(), ds.std.clone()));
    let grey_to_colour = ds.channels == 1 && c == 3;
    if !grey_to_colour && ds.channels != c {
        bail!("the images have {} channels but the model takes {c}: pass images of the model's kind", ds.channels);
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        bail!("index {bad} is out of range: the dataset has {} images", ds.len());
    }
    let transform = Transform::Resize { size: side };
    let plane = side * side;
    let mut images = vec![0.0f32; indices.len() * c * plane];
    for (k, &i) in indices.iter().enumerate() {
        let img = ds.image(i)?;
        let out = &mut images[k * c * plane..(k + 1) * c * plane];
        let mut rng = rng_for(&[0, 0, i as u64]);
        if grey_to_colour {
            // Greyscale images for an RGB model: the grey value in every channel (as PIL's
            // convert('RGB')), then each channel normalised with its own statistics.
            transform.apply(&img, &[0.0], &[1.0], &mut rng, &mut out[..plane]);
            let grey = out[..plane].to_vec();
            for ch in 0..3 {
                for (o, &v) in out[ch * plane..(ch + 1) * plane].iter_mut().zip(&grey) {
                    *o = (v - mean[ch]) / std[ch];
                }
            }
        } else {
            transform.apply(&img, &mean, &std, &mut rng, out);
        }
    }
    let labels: Vec<u32> = indices.iter().map(|&i| ds.labels[i]).collect();
    let names = labels.iter().map(|&l| ds.classes.get(l as usize).cloned().unwrap_or_default()).collect();
    let batch = Batch { images, labels, indices: indices.to_vec(), channels: c, side };
    Ok((batch, names, mean, std))
}

/// Decoded images (of the model's channels) as a normalised batch at `side`: the shorter side
/// resized (bicubic, antialiased) and the centre cropped, as [`Images::Files`] are.
pub fn decoded_batch(images: &[crate::data::Image], side: usize, mean: &[f32], std: &[f32]) -> Batch {
    let c = mean.len();
    let per = c * side * side;
    let mut pixels = vec![0.0; images.len() * per];
    let transform = Transform::CenterCrop { size: side, crop_pct: 1.0 };
    for (k, img) in images.iter().enumerate() {
        transform.apply(img, mean, std, &mut rng_for(&[0]), &mut pixels[k * per..(k + 1) * per]);
    }
    let n = images.len();
    Batch { images: pixels, labels: vec![0; n], indices: (0..n).collect(), channels: c, side }
}

/// Saves a PNG, creating the folder.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder '{}'", dir.display()))?;
    }
    img.save(path).with_context(|| format!("cannot write '{}'", path.display()))
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Embedded so charts need no system fonts (DejaVu Sans, free licence: assets/README.md).
        let _ = plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        );
    });
}

/// Plots `(x, y)` series as a line chart PNG (e.g. loss per iteration and its moving average).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    draw_line_chart(root, title, x_label, y_label, &without_errors(series), false, &[])
        .map_err(|e| anyhow::anyhow!("cannot draw '{}': {e}", path.display()))
}

/// Points `(x, mean, standard deviation)` of a chart with error bars.
pub type ErrorPoints = Vec<(f64, f64, f64)>;

/// Plots `(x, mean, std)` series as lines through the means with error bars of one standard
/// deviation (none where it is 0), and `baselines` (name, value) as dashed horizontal lines across
/// them, as a PNG.
pub fn error_bar_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, ErrorPoints)],
    baselines: &[(&str, f64)],
) -> Result<()> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    draw_line_chart(root, title, x_label, y_label, series, true, baselines)
        .map_err(|e| anyhow::anyhow!("cannot draw '{}': {e}", path.display()))
}

fn without_errors<'a>(series: &[(&'a str, Vec<(f64, f64)>)]) -> Vec<(&'a str, ErrorPoints)> {
    series.iter().map(|(name, s)| (*name, s.iter().map(|&(x, y)| (x, y, 0.0)).collect())).collect()
}

/// [`line_chart`] as an SVG document of `width x height` pixels (for pages that embed it).
pub fn line_chart_svg(
    (width, height): (u32, u32),
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        draw_line_chart(root, title, x_label, y_label, &without_errors(series), false, &[])
            .map_err(|e| anyhow::anyhow!("cannot draw '{title}': {e}"))?;
    }
    Ok(svg)
}

fn draw_line_chart<DB: plotters::prelude::DrawingBackend>(
    root: plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, ErrorPoints)],
    points: bool,
    baselines: &[(&str, f64)],
) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    register_font();
    let pts = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y, e) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y - e), y1.max(y + e));
    }
    if x0 > x1 {
        return Err("nothing to plot".into());
    }
    for &(_, y) in baselines {
        (y0, y1) = (y0.min(y), y1.max(y));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    // Marked points keep a margin, so that the first and last are seen whole.
    let x_pad = if points { ((x1 - x0) * 0.05).max(0.05) } else { 0.0 };
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    // The drawn ranges, which the baselines span and the legend's placement measures against.
    let (xs, ys) = ((x0 - x_pad, x1 + x_pad), (y0 - pad, y1 + pad));
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
        .map_err(|e| err(&e))?;
    // Small values (learning rates) in scientific notation, so that ticks stay distinct.
    let tick = |v: &f64| {
        if v.abs() < 1e-2 && *v != 0.0 {
            format!("{v:.1e}")
        } else {
            format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()
        .map_err(|e| err(&e))?;
    // Raw values under their moving mean are drawn pale; other series in distinct dark colours.
    let dark = [
        RGBColor(20, 80, 180),
        RGBColor(200, 60, 40),
        RGBColor(40, 150, 60),
        RGBColor(150, 90, 20),
        RGBColor(120, 40, 170),
        RGBColor(0, 150, 190),
        RGBColor(20, 20, 20),
        RGBColor(190, 30, 120),
    ];
    let pale = [RGBColor(180, 200, 230)];
    let colours: Vec<RGBColor> = if series.iter().any(|(name, _)| *name == MOVING_MEAN) {
        pale.iter().chain(&dark).copied().collect()
    } else {
        dark.to_vec()
    };
    for (i, (name, s)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(s.iter().map(|&(x, y, _)| (x, y)), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        if points {
            chart
                .draw_series(s.iter().map(|&(x, y, _)| Circle::new((x, y), 4, colour.filled())))
                .map_err(|e| err(&e))?;
        }
        let bars = s.iter().filter(|p| p.2 > 0.0);
        chart
            .draw_series(bars.map(|&(x, y, e)| ErrorBar::new_vertical(x, y - e, y, y + e, colour.stroke_width(2), 10)))
            .map_err(|e| err(&e))?;
    }
    let greys = [
        RGBColor(90, 90, 90),
        RGBColor(170, 120, 30),
        RGBColor(130, 60, 150),
        RGBColor(60, 140, 140),
        RGBColor(210, 90, 160),
        RGBColor(120, 160, 40),
    ];
    for (i, &(name, y)) in baselines.iter().enumerate() {
        let style = greys[i % greys.len()].stroke_width(2);
        let ends = [(xs.0, y), (xs.1, y)];
        chart
            .draw_series(DashedLineSeries::new(ends, 8, 5, style))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    let (w, h) = chart.plotting_area().dim_in_pixel();
    let area = (f64::from(w.max(1)), f64::from(h.max(1)));
    let position = legend_position(series, baselines, (xs, ys), area);
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// The legend's place where it hides the least of the chart: each candidate box (plotters' default,
/// middle right, first; then the corners and the other sides' middles), sized from the labels, is
/// scored by how many samples of the lines, points and error bars fall inside it.
fn legend_position(
    series: &[(&str, ErrorPoints)],
    baselines: &[(&str, f64)],
    ((x0, x1), (y0, y1)): ((f64, f64), (f64, f64)),
    (width, height): (f64, f64),
) -> plotters::chart::SeriesLabelPosition {
    use plotters::chart::SeriesLabelPosition::*;
    let unit = |x: f64, y: f64| ((x - x0) / (x1 - x0).max(1e-12), (y - y0) / (y1 - y0).max(1e-12));
    let mut samples = Vec::new();
    let mut segment = |(ax, ay): (f64, f64), (bx, by): (f64, f64)| {
        samples.extend((0..=16).map(|i| {
            let t = i as f64 / 16.0;
            unit(ax + t * (bx - ax), ay + t * (by - ay))
        }))
    };
    for (_, s) in series {
        for p in s.windows(2) {
            segment((p[0].0, p[0].1), (p[1].0, p[1].1));
        }
        for &(x, y, e) in s {
            segment((x, y - e), (x, y + e));
        }
    }
    for &(_, y) in baselines {
        segment((x0, y), (x1, y));
    }
    // Text of about 8 px a character beside a 20 px line sample; rows of about 22 px.
    let names = series.iter().map(|(n, _)| *n).chain(baselines.iter().map(|(n, _)| *n));
    let chars = names.clone().map(|n| n.chars().count()).max().unwrap_or(0) as f64;
    let (bw, bh) = (((chars * 8.0 + 50.0) / width).min(1.0), ((names.count() as f64 * 22.0 + 12.0) / height).min(1.0));
    let span = |side: u8, size: f64| match side {
        0 => (0.0, size),
        1 => (0.5 - size / 2.0, 0.5 + size / 2.0),
        _ => (1.0 - size, 1.0),
    };
    // (position, horizontal side, vertical side): 0 left/lower, 1 middle, 2 right/upper.
    let candidates = [
        (MiddleRight, 2, 1),
        (UpperRight, 2, 2),
        (LowerRight, 2, 0),
        (UpperLeft, 0, 2),
        (LowerLeft, 0, 0),
        (MiddleLeft, 0, 1),
        (UpperMiddle, 1, 2),
        (LowerMiddle, 1, 0),
    ];
    let hidden = |&(_, hx, vy): &(plotters::chart::SeriesLabelPosition, u8, u8)| {
        let ((ax, bx), (ay, by)) = (span(hx, bw), span(vy, bh));
        samples.iter().filter(|&&(u, v)| (ax..=bx).contains(&u) && (ay..=by).contains(&v)).count()
    };
    // min_by_key keeps the first of equal scores, so the default wins ties.
    candidates.into_iter().min_by_key(hidden).map_or(MiddleRight, |c| c.0)
}

/// Loss per iteration and its moving average over `window` iterations, titled `title`.
pub fn loss_curve(path: &Path, title: &str, losses: &[(f64, f64)], window: usize) -> Result<()> {
    line_chart(path, title, "iteration", "loss (masked patches)", &loss_series(losses, window))
}

/// The loss and its moving average over `window` iterations, as chart series.
pub fn loss_series(losses: &[(f64, f64)], window: usize) -> Vec<(&'static str, Vec<(f64, f64)>)> {
    let smooth: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let lo = i.saturating_sub(window.max(1) - 1);
            (x, losses[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - lo) as f64)
        })
        .collect();
    vec![("loss", losses.to_vec()), (MOVING_MEAN, smooth)]
}

/// Name of the averaged series of [`loss_series`] (the raw values under it are drawn pale).
pub const MOVING_MEAN: &str = "moving mean";

#[cfg(test)]
mod caption_tests {
    use super::*;

    #[test]
    fn captions_surround_the_panels_without_touching_them() {
        let panels = RgbImage::from_fn(4 * 30 + 2, 2 * 30 + 2, |x, y| Rgb([(x * 2) as u8, (y * 3) as u8, 7]));
        let caps = Captions {
            title: "MAE (run, epoch 3): 37 of 49 patches removed".into(),
            columns: RECONSTRUCTION_COLUMNS.map(String::from).to_vec(),
            rows: vec!["Ankle boot".into(), "Pullover".into()],
        };
        let out = captioned(panels.clone(), &caps, &panel_grid(4, 2, 28, 28, GUTTER)).unwrap();
        // The panels sit at the bottom, right of the row labels, pixel for pixel.
        let top = out.height() - panels.height();
        let left = (0..out.width()).find(|&x| *out.get_pixel(x, top) == *panels.get_pixel(0, 0)).unwrap();
        assert!(top > 20 && left > 20, "room for the titles and labels: top {top}, left {left}");
        for (x, y, p) in panels.enumerate_pixels() {
            assert_eq!(out.get_pixel(left + x, top + y), p);
        }
        // Text was drawn in the margins: dark pixels above and to the left of the panels.
        let dark = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (y0..y1).any(|y| (x0..x1).any(|x| out.get_pixel(x, y).0.iter().all(|&v| v < 100)))
        };
        assert!(dark(0, out.width(), 0, top), "title and column titles");
        assert!(dark(0, left, top, out.height()), "row labels");
    }
}

#[cfg(test)]
mod legend_tests {
    use plotters::chart::SeriesLabelPosition;

    use super::legend_position;

    fn position_over(y: f64) -> SeriesLabelPosition {
        let line = vec![(0.0, y, 0.0), (5.0, y, 0.0), (10.0, y, 0.0)];
        legend_position(&[("run", line)], &[], ((0.0, 10.0), (0.0, 10.0)), (700.0, 400.0))
    }

    #[test]
    fn the_legend_moves_off_the_data() {
        // A line across the middle hides the default middle-right place: the upper right is free.
        assert!(matches!(position_over(5.0), SeriesLabelPosition::UpperRight));
        // Data along the top leaves the default where it is.
        assert!(matches!(position_over(9.8), SeriesLabelPosition::MiddleRight));
    }
}
