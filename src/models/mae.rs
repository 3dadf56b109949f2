//! Masked Autoencoder (He et al. 2021), following the official `models_mae.py`:
//! the encoder sees only the visible patches; a light decoder appends one shared mask token per
//! removed patch, unshuffles, adds its own position embeddings and predicts patch pixels; the loss
//! is the MSE on removed patches only, against per-patch normalised pixels by default.
//!
//! `encoder_mask_token` builds the paper's Table 1c / Table 2 counterpart instead: every patch
//! enters the encoder, removed ones replaced by a learned mask token, and the decoder reads the
//! encoder's full, ordered sequence (3.3x the encoder FLOPs at 75% masking).
//!
//! [`MaeTarget`] picks what the decoder predicts at removed patches (Table 1d): pixels (the
//! default), the largest PCA coefficients of the patch, or the visual tokenizer's id of the patch.
//!
//! Training ([`MaskedAutoencoder::forward`]) predicts only the patches the loss reads: the last
//! decoder block attends over every token as usual, then runs its MLP, the norm and the head on the
//! removed patches' rows alone. The loss and gradients are those of predicting every patch and
//! masking the loss, as the official code does, for 3% fewer FLOPs on the small models at 75%
//! masking.

use anyhow::{Context, Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::init::InitRng;
use super::vit::{
    Block, BlockExtras, LN_EPS, LayerNorm, Linear, PatchEmbed, PatchTokens, embed_with_cls, fixed_pos_embed, patchify,
    token, unpatchify,
};
use super::{Preset, find_preset, preset_names};
use crate::masking::Mask;
use crate::ops::gather::gather_rows;

/// Architecture of a masked autoencoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaeConfig {
    /// Image side in pixels (square images).
    pub img_size: usize,
    /// Patch side in pixels; must divide `img_size`.
    pub patch_size: usize,
    /// Image channels (1 for Fashion-MNIST, 3 for RGB).
    pub in_chans: usize,
    /// Encoder width.
    pub embed_dim: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Encoder attention heads.
    pub num_heads: usize,
    /// Decoder width.
    pub decoder_embed_dim: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Decoder attention heads.
    pub decoder_num_heads: usize,
    /// MLP hidden width / block width.
    pub mlp_ratio: f64,
    /// Normalise each target patch by its own mean and variance (the paper's default).
    pub norm_pix_loss: bool,
    /// The ablation "encoder w/ [M]" (MAE Table 1c): removed patches enter the encoder as a
    /// learned mask token instead of being dropped.
    #[serde(default)]
    pub encoder_mask_token: bool,
    /// What the decoder predicts at removed patches.
    #[serde(default)]
    pub target: MaeTarget,
    /// Epsilon of every LayerNorm: 1e-6 in the official code and timm, 1e-12 in Hugging Face's
    /// `ViTMAEConfig` (checkpoints from before this field used 1e-6).
    #[serde(default = "official_norm_eps")]
    pub layer_norm_eps: f64,
}

fn official_norm_eps() -> f64 {
    LN_EPS
}

/// The reconstruction target of an MAE (Table 1d).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaeTarget {
    /// Patch pixels (per-patch normalised when `norm_pix_loss`), mean squared error.
    #[default]
    Pixels,
    /// The `components` largest PCA coefficients of the (normalised) patch, mean squared error.
    /// The basis is fitted on training patches before pretraining and saved with the model.
    Pca {
        /// Coefficients predicted per patch (the paper: 96 of 768 dimensions).
        components: usize,
    },
    /// The visual tokenizer's id of the patch (BEiT's target), cross-entropy.
    Tokens {
        /// The tokenizer's vocabulary.
        vocab_size: usize,
    },
}

impl MaeConfig {
    /// Every preset, by the name `--model` and [`MaeConfig::preset`] accept.
    pub const PRESETS: &'static [Preset<Self>] = &[
        ("mae_vit_base_patch16", Self::vit_base_patch16),
        ("mae_vit_large_patch16", Self::vit_large_patch16),
        ("mae_vit_huge_patch14", Self::vit_huge_patch14),
        ("mae_tiny_28", Self::tiny_28),
        ("mae_tiny_32", Self::tiny_32),
        ("mae_micro", Self::micro),
    ];

    /// The preset called `name` in [`MaeConfig::PRESETS`].
    pub fn preset(name: &str) -> Result<Self> {
        find_preset(Self::PRESETS, name)
            .with_context(|| format!("unknown model preset '{name}': choose one of {}", preset_names(Self::PRESETS)))
    }

    /// The paper's ViT-B/16 (224 px RGB) with its 512-wide, 8-block decoder.
    pub fn vit_base_patch16() -> Self {
        MaeConfig {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            decoder_embed_dim: 512,
            decoder_depth: 8,
            decoder_num_heads: 16,
            mlp_ratio: 4.0,
            norm_pix_loss: true,
            encoder_mask_token: false,
            target: MaeTarget::Pixels,
            layer_norm_eps: LN_EPS,
        }
    }

    /// The paper's ViT-L/16 with the same decoder.
    pub fn vit_large_patch16() -> Self {
        MaeConfig { embed_dim: 1024, depth: 24, num_heads: 16, ..Self::vit_base_patch16() }
    }

    /// The paper's ViT-H/14 with the same decoder.
    pub fn vit_huge_patch14() -> Self {
        MaeConfig { patch_size: 14, embed_dim: 1280, depth: 32, num_heads: 16, ..Self::vit_base_patch16() }
    }

    /// 28 px greyscale (Fashion-MNIST) on a CPU: patch 4, encoder 192 wide with 6 blocks, decoder
    /// 128 wide with 2; exactly the shapes of the PyTorch peer's fmnist-tiny benchmark.
    pub fn tiny_28() -> Self {
        MaeConfig {
            img_size: 28,
            patch_size: 4,
            in_chans: 1,
            embed_dim: 192,
            depth: 6,
            num_heads: 3,
            decoder_embed_dim: 128,
            decoder_depth: 2,
            decoder_num_heads: 4,
            ..Self::vit_base_patch16()
        }
    }

    /// 32 px RGB (CIFAR-10): [`MaeConfig::tiny_28`] with 12 encoder and 4 decoder blocks.
    pub fn tiny_32() -> Self {
        MaeConfig { img_size: 32, in_chans: 3, depth: 12, decoder_depth: 4, ..Self::tiny_28() }
    }

    /// The smallest useful model, for tests and quick runs: 28 px greyscale, encoder 64 wide with
    /// 2 blocks, decoder 32 wide with 1.
    pub fn micro() -> Self {
        MaeConfig { embed_dim: 64, depth: 2, num_heads: 4, decoder_embed_dim: 32, decoder_depth: 1, ..Self::tiny_28() }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Patches per image L.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Values per flattened patch `p*p*C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// Values the decoder predicts per patch.
    pub fn pred_dim(&self) -> usize {
        match self.target {
            MaeTarget::Pixels => self.patch_dim(),
            MaeTarget::Pca { components } => components,
            MaeTarget::Tokens { vocab_size } => vocab_size,
        }
    }

    /// Checks the sizes fit together, with an error that says what to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.patch_size > 0 && self.img_size > 0, "image and patch sizes must be positive");
        ensure!(
            self.img_size.is_multiple_of(self.patch_size),
            "image size {} is not divisible by patch size {}: use an image size that is a multiple of {} (e.g. --img-size {})",
            self.img_size,
            self.patch_size,
            self.patch_size,
            (self.img_size / self.patch_size).max(1) * self.patch_size
        );
        for (what, dim, heads) in
            [("encoder", self.embed_dim, self.num_heads), ("decoder", self.decoder_embed_dim, self.decoder_num_heads)]
        {
            ensure!(heads > 0 && dim % heads == 0, "{what} width {dim} is not divisible by its {heads} heads");
            ensure!(dim % 4 == 0, "{what} width {dim} must be a multiple of 4 for 2-D sin-cos position embeddings");
        }
        ensure!(self.in_chans > 0, "in_chans must be positive");
        match self.target {
            MaeTarget::Pixels => {}
            MaeTarget::Pca { components } => ensure!(
                (1..=self.patch_dim()).contains(&components),
                "a PCA target needs 1 to {} components (the patch's {} values), not {components}",
                self.patch_dim(),
                self.patch_dim()
            ),
            MaeTarget::Tokens { vocab_size } => {
                ensure!(vocab_size > 1, "a token target needs a vocabulary of at least 2 codes")
            }
        }
        Ok(())
    }

    /// Builds the model with the official initialisation from `seed`.
    pub fn init(&self, seed: u64, device: &Device) -> Result<MaskedAutoencoder> {
        self.validate()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let g = (self.grid(), self.grid());
        let blocks = |n, dim, heads, rng: &mut InitRng| {
            (0..n)
                .map(|_| Block::new(dim, heads, self.mlp_ratio, rng, device).with_norm_eps(self.layer_norm_eps))
                .collect()
        };
        Ok(MaskedAutoencoder {
            patch_embed: PatchEmbed::new(self.patch_size, self.in_chans, self.embed_dim, &mut rng, device),
            cls_token: token(self.embed_dim, &mut rng, device),
            encoder_mask_token: self.encoder_mask_token.then(|| token(self.embed_dim, &mut rng, device)),
            pos_embed: fixed_pos_embed(self.embed_dim, g, true, device),
            blocks: blocks(self.depth, self.embed_dim, self.num_heads, &mut rng),
            norm: LayerNorm::with_eps(self.embed_dim, self.layer_norm_eps, device),
            decoder_embed: Linear::new(self.embed_dim, self.decoder_embed_dim, &mut rng, device),
            mask_token: token(self.decoder_embed_dim, &mut rng, device),
            decoder_pos_embed: fixed_pos_embed(self.decoder_embed_dim, g, true, device),
            decoder_blocks: blocks(self.decoder_depth, self.decoder_embed_dim, self.decoder_num_heads, &mut rng),
            decoder_norm: LayerNorm::with_eps(self.decoder_embed_dim, self.layer_norm_eps, device),
            decoder_pred: Linear::new(self.decoder_embed_dim, self.pred_dim(), &mut rng, device),
            pca: match self.target {
                // A placeholder until `with_pca` sets the basis fitted on the data.
                MaeTarget::Pca { components } => Some(PcaBasis::new(
                    vec![0.0; self.patch_dim()],
                    vec![0.0; self.patch_dim() * components],
                    components,
                    device,
                )),
                _ => None,
            },
            target: self.target,
            patch_size: self.patch_size,
            norm_pix_loss: self.norm_pix_loss,
        })
    }
}

/// A masked autoencoder with a ViT encoder and a light ViT decoder.
#[derive(Module, Debug)]
pub struct MaskedAutoencoder {
    /// Patch embedding of the encoder.
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Param<Tensor<3>>,
    /// `[1, 1, D]`, only in the "encoder w/ [M]" ablation.
    pub encoder_mask_token: Option<Param<Tensor<3>>>,
    /// Position embeddings `[1, 1 + L, D]`, cls slot first: never trained (no gradient), but data
    /// saved and loaded with the model; 2-D sin-cos in a fresh model.
    pub pos_embed: Param<Tensor<3>>,
    /// Encoder blocks.
    pub blocks: Vec<Block>,
    /// Final encoder norm.
    pub norm: LayerNorm,
    /// Encoder width -> decoder width.
    pub decoder_embed: Linear,
    /// Shared learned token standing in for every removed patch `[1, 1, Dd]`.
    pub mask_token: Param<Tensor<3>>,
    /// Decoder position embeddings `[1, 1 + L, Dd]`, as `pos_embed`.
    pub decoder_pos_embed: Param<Tensor<3>>,
    /// Decoder blocks.
    pub decoder_blocks: Vec<Block>,
    /// Final decoder norm.
    pub decoder_norm: LayerNorm,
    /// Decoder width -> patch pixels (or PCA coefficients, or token logits).
    pub decoder_pred: Linear,
    /// The PCA basis of a PCA target (fitted on data, saved, never trained).
    pub pca: Option<PcaBasis>,
    #[module(skip)]
    target: MaeTarget,
    patch_size: usize,
    norm_pix_loss: bool,
}

/// A PCA basis of patch space: `coefficients = (patch - mean) @ components`.
#[derive(Module, Debug)]
pub struct PcaBasis {
    /// Mean patch `[1, P]`.
    pub mean: Param<Tensor<2>>,
    /// Principal directions as columns, largest variance first `[P, K]`.
    pub components: Param<Tensor<2>>,
}

impl PcaBasis {
    /// A basis from a mean `[P]` and row-major components `[P * K]`; it is data, not a weight, so
    /// it requires no gradient.
    pub fn new(mean: Vec<f32>, components: Vec<f32>, k: usize, device: &Device) -> Self {
        let p = mean.len();
        let fixed = |t: Tensor<2>| Param::from_tensor(t).set_require_grad(false);
        PcaBasis {
            mean: fixed(Tensor::<1>::from_floats(mean.as_slice(), device).reshape([1, p])),
            components: fixed(Tensor::<1>::from_floats(components.as_slice(), device).reshape([p, k])),
        }
    }

    /// Fits the `k` largest principal directions of `patches: [N, P]` (covariance in f64,
    /// eigenvectors by cyclic Jacobi rotations).
    pub fn fit(patches: Tensor<2>, k: usize) -> Result<Self> {
        let [n, p] = patches.dims();
        ensure!(n > 1 && (1..=p).contains(&k), "PCA of {n} patches of {p} values cannot give {k} components");
        let device = patches.device();
        let mean = patches.clone().mean_dim(0);
        let centred = patches - mean.clone();
        let cov: Vec<f32> = (centred.clone().transpose().matmul(centred) / (n as f64 - 1.0))
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (_, vectors) = symmetric_eigen(&cov.iter().map(|&v| v as f64).collect::<Vec<_>>(), p);
        let components: Vec<f32> =
            (0..p).flat_map(|row| (0..k).map(move |c| (row, c))).map(|(row, c)| vectors[row * p + c] as f32).collect();
        let mean: Vec<f32> =
            mean.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Self::new(mean, components, k, &device))
    }

    /// `patches: [B, L, P] -> [B, L, K]`, outside autodiff (a target, not a prediction).
    pub fn project(&self, patches: Tensor<3>) -> Tensor<3> {
        let [b, l, p] = patches.dims();
        let k = self.components.dims()[1];
        let x = patches.reshape([b * l, p]) - self.mean.val().detach();
        x.matmul(self.components.val().detach()).reshape([b, l, k])
    }

    /// `coefficients: [B, L, K] -> [B, L, P]`: the patches the coefficients stand for.
    pub fn reconstruct(&self, coefficients: Tensor<3>) -> Tensor<3> {
        let [b, l, k] = coefficients.dims();
        let p = self.mean.dims()[1];
        let x = coefficients.reshape([b * l, k]).matmul(self.components.val().detach().transpose())
            + self.mean.val().detach();
        x.reshape([b, l, p])
    }
}

/// Eigen-decomposition of the symmetric `n x n` matrix `a` (row-major) by cyclic Jacobi rotations:
/// eigenvalues in decreasing order and the matching unit eigenvectors as the columns of a
/// row-major `n x n` matrix.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = if theta >= 0.0 { 1.0 } else { -1.0 } / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- J^T A J, V <- V J with J the rotation in the (p, q) plane.
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors =
        (0..n).flat_map(|row| order.iter().map(move |&col| (row, col))).map(|(row, col)| v[row * n + col]).collect();
    (values, vectors)
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct MaeOutput {
    /// Scalar loss `[1]`.
    pub loss: Tensor<1>,
    /// Predictions `[B, R, pred_dim]` of the patches the loss is computed on,
    /// [`Mask::ids_target`]: the removed ones (normalised pixels when `norm_pix_loss`).
    pub pred: Tensor<3>,
}

impl MaskedAutoencoder {
    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// Whether targets are per-patch normalised.
    pub fn norm_pix_loss(&self) -> bool {
        self.norm_pix_loss
    }

    /// Input side in pixels.
    pub fn img_size(&self) -> usize {
        let l = self.pos_embed.dims()[1] - 1;
        (l as f64).sqrt().round() as usize * self.patch_size
    }

    /// What the decoder predicts.
    pub fn target_kind(&self) -> MaeTarget {
        self.target
    }

    /// Sets the PCA basis of a PCA-target model (fitted on training patches, see
    /// [`Self::pixel_target`]); an error for other targets or another basis shape.
    pub fn with_pca(mut self, basis: PcaBasis) -> Result<Self> {
        let MaeTarget::Pca { components } = self.target else { anyhow::bail!("only a PCA-target MAE has a PCA basis") };
        ensure!(
            basis.components.dims() == [self.patch_dim(), components],
            "the PCA basis {:?} does not fit patches of {} values and {components} components",
            basis.components.dims(),
            self.patch_dim()
        );
        self.pca = Some(basis);
        Ok(self)
    }

    /// Values per flattened patch `p*p*C`.
    fn patch_dim(&self) -> usize {
        self.patch_embed.proj.weight.dims()[0]
    }

    /// `imgs: [B, C, H, W] -> [B, 1 + K, D]`: embeds all patches, keeps the visible ones, prepends
    /// the cls token and runs the encoder (no mask tokens enter the encoder). In the "encoder w/ [M]"
    /// ablation every patch is kept, removed ones as the mask token: `[B, 1 + L, D]`.
    pub fn forward_encoder(&self, imgs: Tensor<4>, mask: &Mask) -> Tensor<3> {
        let device = imgs.device();
        let tokens = match &self.encoder_mask_token {
            None => PatchTokens::Keep(mask.ids_keep_tensor(&device)),
            Some(token) => {
                PatchTokens::Replace { weights: mask.mask_tensor(&device).unsqueeze_dim(2), token: token.val() }
            }
        };
        let mut x = embed_with_cls(&self.patch_embed, &self.cls_token, &self.pos_embed, imgs, tokens);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }

    /// The encoder's attention probabilities `[B, H, 1 + L, 1 + L]` per block over every patch (no
    /// masking, [CLS] first), for attention maps.
    pub fn attention_maps(&self, imgs: Tensor<4>) -> Vec<Tensor<4>> {
        let x = embed_with_cls(&self.patch_embed, &self.cls_token, &self.pos_embed, imgs, PatchTokens::All);
        crate::models::vit::attention_maps(&self.blocks, x, |_| None)
    }

    /// `latent: [B, 1 + K, D] -> [B, L, p*p*C]`: appends mask tokens, unshuffles with
    /// `ids_restore`, adds decoder position embeddings, runs the decoder, drops the cls token.
    /// (With the encoder's mask token the latent is already the full sequence in patch order.)
    pub fn forward_decoder(&self, latent: Tensor<3>, mask: &Mask) -> Tensor<3> {
        let [b, _, _] = latent.dims();
        self.decode(latent, mask, None).slice([0..b, 1..mask.num_patches + 1])
    }

    /// As [`Self::forward_decoder`], predicting only the patches [`Mask::ids_target`]:
    /// `[B, R, pred_dim]`. The last block's MLP, the norm and the head skip the other rows.
    pub fn forward_decoder_targets(&self, latent: Tensor<3>, mask: &Mask) -> Tensor<3> {
        // Decoder rows are patch + 1: the cls token comes first.
        let rows = mask.ids_target_tensor(&latent.device()).add_scalar(1);
        self.decode(latent, mask, Some(rows))
    }

    /// The decoder's sequence `[B, 1 + L, pred_dim]`, or its `rows` only.
    fn decode(&self, latent: Tensor<3>, mask: &Mask, rows: Option<Tensor<2, Int>>) -> Tensor<3> {
        let device = latent.device();
        let x = self.decoder_embed.forward(latent);
        let [b, n_vis, _] = x.dims();
        let l = mask.num_patches;
        let x = if self.encoder_mask_token.is_some() {
            x
        } else {
            let mut x_ = x.clone().slice([0..b, 1..n_vis]);
            if mask.removes_any() {
                let mask_tokens = self.mask_token.val().repeat_dim(0, b).repeat_dim(1, l + 1 - n_vis);
                x_ = Tensor::cat(vec![x_, mask_tokens], 1);
            }
            let x_ = gather_rows(x_, mask.ids_restore_tensor(&device));
            Tensor::cat(vec![x.slice([0..b, 0..1]), x_], 1)
        };
        let mut x = x + self.decoder_pos_embed.val();
        let mut rows = rows;
        for (i, block) in self.decoder_blocks.iter().enumerate() {
            let rows = if i + 1 == self.decoder_blocks.len() { rows.take() } else { None };
            x = block.forward_with(x, &BlockExtras { rows, ..Default::default() });
        }
        // Without decoder blocks the rows are picked before the norm and the head.
        if let Some(rows) = rows {
            x = gather_rows(x, rows);
        }
        self.decoder_pred.forward(self.decoder_norm.forward(x))
    }

    /// Patch pixels `[B, L, p*p*C]`, normalised per patch when `norm_pix_loss` (unbiased variance,
    /// eps 1e-6, as the official code): the pixel target, and what a PCA target projects.
    pub fn pixel_target(&self, imgs: Tensor<4>) -> Tensor<3> {
        let target = patchify(imgs, self.patch_size);
        if !self.norm_pix_loss {
            return target;
        }
        let (var, mean) = target.clone().var_mean(2);
        (target - mean) / (var + 1e-6).sqrt()
    }

    /// The regression target `[B, L, pred_dim]`: [`Self::pixel_target`], or its PCA coefficients.
    /// (A token target has no regression target: see [`Self::forward_token_loss`].)
    pub fn target(&self, imgs: Tensor<4>) -> Tensor<3> {
        let pixels = self.pixel_target(imgs);
        match &self.pca {
            Some(basis) => basis.project(pixels),
            None => pixels,
        }
    }

    /// Mean squared error over the removed patches only: `[1]`. `pred` holds the predictions of
    /// every patch `[B, L, pred_dim]` ([`Self::forward_decoder`], as the official code) or of the
    /// removed ones only `[B, R, pred_dim]` ([`Self::forward_decoder_targets`]). With
    /// [`Mask::keep_all`] (nothing removed; used to measure the cost of a full encoder) the mean is
    /// over all patches.
    pub fn forward_loss(&self, imgs: Tensor<4>, pred: Tensor<3>, mask: &Mask) -> Tensor<1> {
        let ids = mask.ids_target_tensor(&pred.device());
        let pred = target_rows(pred, &ids, mask);
        // Every image has R target patches: the mean over all values is the mean of per-patch means.
        (pred - gather_rows(self.target(imgs), ids)).powi_scalar(2).mean()
    }

    /// Cross-entropy of the decoder's logits `pred` (every patch's `[B, L, vocab]` or the removed
    /// patches' `[B, R, vocab]`, as in [`Self::forward_loss`]) against the visual tokenizer's ids of
    /// every patch `token_ids: [B, L]`, over the removed patches only: `[1]` (the dVAE-token target).
    pub fn forward_token_loss(&self, pred: Tensor<3>, token_ids: Tensor<2, Int>, mask: &Mask) -> Tensor<1> {
        let ids = mask.ids_target_tensor(&pred.device());
        let pred = target_rows(pred, &ids, mask);
        log_softmax(pred, 2).gather(2, token_ids.gather(1, ids).unsqueeze_dim(2)).mean().neg()
    }

    /// Encoder, decoder and loss for `imgs: [B, C, H, W]` under `mask`, predicting only the
    /// patches the loss reads ([`Self::forward_decoder_targets`]).
    pub fn forward(&self, imgs: Tensor<4>, mask: &Mask) -> MaeOutput {
        let latent = self.forward_encoder(imgs.clone(), mask);
        let pred = self.forward_decoder_targets(latent, mask);
        let loss = self.forward_loss(imgs, pred.clone(), mask);
        MaeOutput { loss, pred }
    }

    /// Predicted images `[B, C, H, W]` in the input's (normalised) pixel space. With
    /// `norm_pix_loss` the per-patch predictions are un-normalised with the mean and variance of the
    /// true patch, as the official visualisation does; PCA coefficients are mapped back to patches.
    /// An error for a token target (it predicts token ids, not pixels).
    pub fn predict_pixels(&self, imgs: Tensor<4>, mask: &Mask) -> Result<Tensor<4>> {
        ensure!(
            !matches!(self.target, MaeTarget::Tokens { .. }),
            "this MAE predicts visual-token ids, not pixels: it has no reconstruction to picture"
        );
        let [_, c, h, w] = imgs.dims();
        let p = self.patch_size;
        let mut pred = self.forward_decoder(self.forward_encoder(imgs.clone(), mask), mask);
        if let Some(basis) = &self.pca {
            pred = basis.reconstruct(pred);
        }
        if self.norm_pix_loss {
            let (var, mean) = patchify(imgs, p).var_mean(2);
            pred = pred * (var + 1e-6).sqrt() + mean;
        }
        Ok(unpatchify(pred, p, (h / p, w / p), c))
    }
}

/// The target patches' rows `ids: [B, R]` of predictions of every patch; predictions of the
/// target patches alone as they are. Panics, naming both expected sizes, on any other size.
fn target_rows(pred: Tensor<3>, ids: &Tensor<2, Int>, mask: &Mask) -> Tensor<3> {
    let (n, r) = (pred.dims()[1], ids.dims()[1]);
    if n == r {
        return pred;
    }
    assert_eq!(
        n, mask.num_patches,
        "predictions of {n} patches per image: expected {} (every patch) or {r} (the removed ones)",
        mask.num_patches
    );
    gather_rows(pred, ids.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::rng_for;
    use crate::masking::uniform_noise;
    use burn::tensor::{Distribution, TensorData};
    use rand::Rng;

    fn scalar(t: Tensor<1>) -> f32 {
        t.into_scalar::<f32>()
    }

    #[test]
    fn predicting_only_the_removed_patches_changes_neither_predictions_nor_losses() {
        let device = Device::flex();
        let (b, l, vocab) = (3, 49, 8);
        let mask = Mask::from_noise(&uniform_noise(&mut rng_for(&[5]), b, l), b, 0.75).unwrap();
        let imgs = Tensor::<4>::random([b, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
        let ids = mask.ids_target_tensor(&device);
        let weights = mask.mask_tensor(&device);
        let masked_mean = |per_patch: Tensor<2>| scalar((per_patch * weights.clone()).sum() / weights.clone().sum());

        // Without decoder blocks the rows are picked before the norm and the head.
        let no_blocks =
            MaeConfig { decoder_depth: 0, ..MaeConfig::preset("mae_tiny_28").unwrap() }.init(0, &device).unwrap();
        let latent = no_blocks.forward_encoder(imgs.clone(), &mask);
        let (full, removed) =
            (no_blocks.forward_decoder(latent.clone(), &mask), no_blocks.forward_decoder_targets(latent, &mask));
        let diff = scalar((gather_rows(full, ids.clone()) - removed).abs().max().reshape([1]));
        assert!(diff < 1e-5, "without decoder blocks, predictions of the removed patches differ by {diff}");

        let model = MaeConfig::preset("mae_tiny_28").unwrap().init(0, &device).unwrap();
        let latent = model.forward_encoder(imgs.clone(), &mask);
        let full = model.forward_decoder(latent.clone(), &mask);
        let removed = model.forward_decoder_targets(latent, &mask);
        let diff = scalar((gather_rows(full.clone(), ids.clone()) - removed.clone()).abs().max().reshape([1]));
        assert!(diff < 1e-5, "predictions of the removed patches differ by {diff}");
        // The official loss: per-patch MSE, averaged over the removed patches.
        let official =
            masked_mean((full.clone() - model.target(imgs.clone())).powi_scalar(2).mean_dim(2).squeeze_dim(2));
        for (what, loss) in [
            ("every patch", model.forward_loss(imgs.clone(), full, &mask)),
            ("removed patches", model.forward_loss(imgs.clone(), removed, &mask)),
            ("forward", model.forward(imgs.clone(), &mask).loss),
        ] {
            assert!((scalar(loss) - official).abs() < 1e-6, "loss from {what} differs from the official one");
        }

        let cfg =
            MaeConfig { target: MaeTarget::Tokens { vocab_size: vocab }, ..MaeConfig::preset("mae_tiny_28").unwrap() };
        let model = cfg.init(0, &device).unwrap();
        let token_ids = Tensor::<2, Int>::from_data(
            TensorData::new((0..b * l).map(|i| (i * 5 % vocab) as i64).collect::<Vec<_>>(), [b, l]),
            &device,
        );
        let latent = model.forward_encoder(imgs, &mask);
        let full = model.forward_decoder(latent.clone(), &mask);
        let official = masked_mean(
            log_softmax(full.clone(), 2).gather(2, token_ids.clone().unsqueeze_dim(2)).squeeze_dim(2).neg(),
        );
        for loss in [
            model.forward_token_loss(full, token_ids.clone(), &mask),
            model.forward_token_loss(model.forward_decoder_targets(latent, &mask), token_ids, &mask),
        ] {
            assert!((scalar(loss) - official).abs() < 1e-5, "token loss differs from the official one");
        }
    }

    #[test]
    #[should_panic(expected = "expected 49 (every patch) or 37 (the removed ones)")]
    fn predictions_of_another_size_are_refused_with_both_sizes() {
        let device = Device::flex();
        let mask = Mask::from_noise(&uniform_noise(&mut rng_for(&[5]), 2, 49), 2, 0.75).unwrap();
        let model = MaeConfig::preset("mae_tiny_28").unwrap().init(0, &device).unwrap();
        model.forward_loss(Tensor::zeros([2, 1, 28, 28], &device), Tensor::zeros([2, 40, 16], &device), &mask);
    }

    #[test]
    fn jacobi_eigenvectors_rebuild_the_matrix_in_decreasing_order() {
        let n = 7;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let b: Vec<f64> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        // A = B B^T: symmetric positive semi-definite.
        let a: Vec<f64> =
            (0..n * n).map(|ij| (0..n).map(|k| b[(ij / n) * n + k] * b[(ij % n) * n + k]).sum()).collect();
        let (values, v) = symmetric_eigen(&a, n);
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        for i in 0..n {
            for j in 0..n {
                let rebuilt: f64 = (0..n).map(|k| v[i * n + k] * values[k] * v[j * n + k]).sum();
                let gram: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
                assert!((rebuilt - a[i * n + j]).abs() < 1e-10, "A[{i},{j}]");
                assert!((gram - f64::from(u8::from(i == j))).abs() < 1e-10, "V^T V [{i},{j}]");
            }
        }
    }

    #[test]
    fn pca_keeps_the_directions_of_largest_variance() {
        let device = Device::flex();
        // Points on a line along (1, 2, 2)/3 plus small noise in the other directions.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let pts: Vec<f32> = (0..500)
            .flat_map(|_| {
                let t: f32 = rng.gen_range(-3.0..3.0);
                let e: [f32; 3] = [rng.gen_range(-0.01..0.01), rng.gen_range(-0.01..0.01), rng.gen_range(-0.01..0.01)];
                [t / 3.0 + 0.5 + e[0], 2.0 * t / 3.0 + e[1], 2.0 * t / 3.0 - 1.0 + e[2]]
            })
            .collect();
        let x = Tensor::<1>::from_floats(pts.as_slice(), &device).reshape([500, 3]);
        let basis = PcaBasis::fit(x.clone(), 1).unwrap();
        let dir: Vec<f32> = basis.components.val().into_data().try_to_vec::<f32>().unwrap();
        let cos = (dir[0] + 2.0 * dir[1] + 2.0 * dir[2]).abs() / 3.0;
        assert!(cos > 0.9999, "first component {dir:?}");
        // Projecting and reconstructing loses only the small noise.
        let x3 = x.reshape([1, 500, 3]);
        let back = basis.reconstruct(basis.project(x3.clone()));
        assert!((back - x3).abs().max().into_scalar::<f32>() < 0.03);
    }
}
