//! A discrete visual tokenizer for BEiT: a VQ-VAE (van den Oord et al. 2017) that maps an image
//! to one token id per BEiT patch and back to pixels.
//!
//! **Why a VQ-VAE with EMA codebook updates rather than DALL-E's dVAE.** The dVAE is trained with
//! a Gumbel-softmax relaxation whose temperature and KL weight need annealing schedules tuned to
//! the data; on a few thousand 28-32 px images those schedules are the whole difficulty. Nearest-
//! neighbour quantisation with an exponential-moving-average codebook has no temperature, is
//! stable on small data, and its codebook usage is directly measurable (a code is used or not), so
//! collapse shows up in the metrics and is repaired by restarting dead codes. The published dVAE
//! encoder itself is available for BEiT targets through [`super::dalle`].
//!
//! **Architecture.** One token per `p x p` patch (`p` = the BEiT patch size): the encoder is an MLP
//! applied to each flattened patch (`p*p*C -> hidden -> hidden -> code_dim`, ReLU), the decoder the
//! mirror image. A patch-wise MLP is a convolution with kernel = stride = `p` followed by 1x1
//! convolutions; it is what is fast on a CPU at 28-32 px (three 2-D matmuls each way) and gives
//! tokens aligned exactly with BEiT's patch grid. It sees no neighbouring patches, which costs a
//! little reconstruction quality at patch borders.
//!
//! **Quantisation.** `z_q` = the nearest codebook vector (squared Euclidean distance); the decoder
//! gets `z_e + sg(z_q - z_e)` (straight-through: the reconstruction gradient reaches the encoder
//! as if quantisation were the identity). Loss = `mse(x̂, x) + β mse(z_e, sg(z_q))` (β = 0.25).
//! The codebook gets no gradient; after each optimizer step [`VqTokenizer::ema_update`] moves it
//! (decay 0.99, Laplace-smoothed cluster sizes with eps 1e-5) and restarts every code whose EMA
//! count fell below a threshold at a random encoding of the batch (as Jukebox).

use anyhow::{Context, Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::beit::BeitConfig;
use super::init::{InitRng, normal, param};
use super::vit::{Linear, patchify, unpatchify};
use super::{Preset, find_preset, preset_names};

/// Architecture and quantiser settings of a [`VqTokenizer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Image side in pixels (square images).
    pub img_size: usize,
    /// Pixels per token side: the BEiT patch size; must divide `img_size`.
    pub patch_size: usize,
    /// Image channels.
    pub in_chans: usize,
    /// Codebook size (BEiT's `vocab_size`).
    pub vocab_size: usize,
    /// Hidden width of the encoder and decoder MLPs.
    pub hidden_dim: usize,
    /// Width of a codebook vector.
    pub code_dim: usize,
    /// Commitment loss weight β.
    pub beta: f64,
    /// EMA decay of the codebook statistics.
    pub ema_decay: f64,
    /// Laplace smoothing of the EMA cluster sizes.
    pub ema_eps: f64,
    /// A code whose EMA count (encodings per batch) falls below this is restarted; 0 disables restarts.
    pub restart_threshold: f64,
}

impl TokenizerConfig {
    /// Every preset, by the name `--model` and [`TokenizerConfig::preset`] accept.
    pub const PRESETS: &'static [Preset<Self>] = &[("vq_tiny_28", Self::tiny_28), ("vq_tiny_32", Self::tiny_32)];

    /// The preset called `name` in [`TokenizerConfig::PRESETS`].
    pub fn preset(name: &str) -> Result<Self> {
        find_preset(Self::PRESETS, name)
            .with_context(|| format!("unknown tokenizer preset '{name}': use one of {}", preset_names(Self::PRESETS)))
    }

    /// The tokenizer of `beit_tiny_28`: 28 px greyscale, patch 4, 512 codes of width 32, MLPs 128 wide.
    pub fn tiny_28() -> Self {
        TokenizerConfig {
            img_size: 28,
            patch_size: 4,
            in_chans: 1,
            vocab_size: 512,
            hidden_dim: 128,
            code_dim: 32,
            beta: 0.25,
            ema_decay: 0.99,
            ema_eps: 1e-5,
            restart_threshold: 1.0,
        }
    }

    /// The tokenizer of `beit_tiny_32`: 32 px RGB, MLPs 256 wide, otherwise [`TokenizerConfig::tiny_28`].
    pub fn tiny_32() -> Self {
        TokenizerConfig { img_size: 32, in_chans: 3, hidden_dim: 256, ..Self::tiny_28() }
    }

    /// Tokens per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens per image.
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Checks the settings, naming the field to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.patch_size > 0 && self.img_size > 0, "img_size and patch_size must be positive");
        ensure!(
            self.img_size.is_multiple_of(self.patch_size),
            "img_size {} is not a multiple of patch_size {}: use a multiple of {}",
            self.img_size,
            self.patch_size,
            self.patch_size
        );
        ensure!(self.in_chans > 0, "in_chans must be at least 1 (1 for greyscale, 3 for RGB)");
        ensure!(
            self.vocab_size >= 2,
            "vocab_size {} is too small: use at least 2 codes (512 in the presets)",
            self.vocab_size
        );
        ensure!(self.hidden_dim > 0 && self.code_dim > 0, "hidden_dim and code_dim must be positive");
        ensure!(
            self.beta >= 0.0 && self.beta.is_finite(),
            "beta {} must be a finite non-negative weight (0.25 in the paper)",
            self.beta
        );
        ensure!(
            self.ema_decay > 0.0 && self.ema_decay < 1.0,
            "ema_decay {} must be in (0, 1): use 0.99",
            self.ema_decay
        );
        ensure!(self.ema_eps > 0.0, "ema_eps {} must be positive: use 1e-5", self.ema_eps);
        ensure!(
            self.restart_threshold >= 0.0,
            "restart_threshold must be non-negative (0 disables dead-code restarts)"
        );
        Ok(())
    }

    /// Checks that this tokenizer gives one token per patch of a `model` (named in the error) with
    /// these image, patch and channel sizes.
    pub fn check_patch_grid(&self, model: &str, img_size: usize, patch_size: usize, in_chans: usize) -> Result<()> {
        ensure!(
            (self.img_size, self.patch_size, self.in_chans) == (img_size, patch_size, in_chans),
            "the tokenizer (image {}, patch {}, {} channels) does not give one token per patch of the {model} (image {img_size}, \
             patch {patch_size}, {in_chans} channels): train a tokenizer with the model's settings",
            self.img_size,
            self.patch_size,
            self.in_chans
        );
        Ok(())
    }

    /// Checks that this tokenizer produces targets for `beit`: same image, patch grid, channels and vocabulary.
    pub fn check_matches(&self, beit: &BeitConfig) -> Result<()> {
        self.check_patch_grid("BEiT model", beit.img_size, beit.patch_size, beit.in_chans)?;
        ensure!(
            self.vocab_size == beit.vocab_size,
            "the tokenizer has {} codes but the BEiT model predicts {} visual tokens: train a tokenizer with --vocab-size {}",
            self.vocab_size,
            beit.vocab_size,
            beit.vocab_size
        );
        Ok(())
    }

    /// A tokenizer with seeded weights; the codebook starts N(0, 1) with unit EMA counts (codes
    /// the first batches do not use are restarted at its encodings).
    pub fn init(&self, seed: u64, device: &Device) -> Result<VqTokenizer> {
        self.validate()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let pixels = self.patch_size * self.patch_size * self.in_chans;
        let encoder = PatchMlp::new(&[pixels, self.hidden_dim, self.hidden_dim, self.code_dim], &mut rng, device);
        let decoder = PatchMlp::new(&[self.code_dim, self.hidden_dim, self.hidden_dim, pixels], &mut rng, device);
        let (k, d) = (self.vocab_size, self.code_dim);
        let codebook = normal(&mut rng, k * d, 1.0);
        let frozen = |p: Param<Tensor<2>>| p.set_require_grad(false);
        Ok(VqTokenizer {
            encoder,
            decoder,
            codebook: frozen(param(codebook.clone(), [k, d], device)),
            ema_cluster_size: param(vec![1.0; k], [k], device).set_require_grad(false),
            ema_embed_sum: frozen(param(codebook, [k, d], device)),
            patch_size: self.patch_size,
            grid: self.grid(),
            in_chans: self.in_chans,
            beta: self.beta,
            ema_decay: self.ema_decay,
            ema_eps: self.ema_eps,
            restart_threshold: self.restart_threshold,
        })
    }
}

/// An MLP applied to every token: Linear layers with ReLU between them (none after the last).
#[derive(Module, Debug)]
pub struct PatchMlp {
    /// The layers, input first.
    pub layers: Vec<Linear>,
}

impl PatchMlp {
    /// Layers of widths `widths[0] -> widths[1] -> ...`, xavier-uniform weights.
    pub fn new(widths: &[usize], rng: &mut InitRng, device: &Device) -> Self {
        Self { layers: widths.windows(2).map(|w| Linear::new(w[0], w[1], rng, device)).collect() }
    }

    /// `x: [B, L, in] -> [B, L, out]`.
    pub fn forward(&self, mut x: Tensor<3>) -> Tensor<3> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// The VQ-VAE tokenizer (see the module documentation).
///
/// The codebook and its EMA statistics are parameters (so checkpoints save them and a resumed run
/// continues exactly) that never receive gradients: every use detaches them, and only
/// [`VqTokenizer::ema_update`] changes them.
#[derive(Module, Debug)]
pub struct VqTokenizer {
    /// Patch encoder `p*p*C -> code_dim`.
    pub encoder: PatchMlp,
    /// Patch decoder `code_dim -> p*p*C`.
    pub decoder: PatchMlp,
    /// Codebook `[K, code_dim]`.
    pub codebook: Param<Tensor<2>>,
    /// EMA of the number of encodings assigned to each code per batch `[K]`.
    pub ema_cluster_size: Param<Tensor<1>>,
    /// EMA of the sum of the encodings assigned to each code `[K, code_dim]`.
    pub ema_embed_sum: Param<Tensor<2>>,
    patch_size: usize,
    grid: usize,
    in_chans: usize,
    beta: f64,
    ema_decay: f64,
    ema_eps: f64,
    restart_threshold: f64,
}

/// What [`VqTokenizer::forward_loss`] computes.
#[derive(Debug, Clone)]
pub struct TokenizerOutput {
    /// `recon_loss + β commit_loss` `[1]`, the quantity to differentiate.
    pub loss: Tensor<1>,
    /// Mean squared error of the reconstruction on the (normalised) pixels `[1]`.
    pub recon_loss: Tensor<1>,
    /// Mean squared distance between the encodings and their codes `[1]` (unweighted).
    pub commit_loss: Tensor<1>,
    /// Token ids `[B, L]`.
    pub ids: Tensor<2, Int>,
    /// Encodings `[B * L, code_dim]`, detached (the input of [`VqTokenizer::ema_update`]).
    pub encodings: Tensor<2>,
    /// Reconstruction `[B, C, H, W]`.
    pub reconstruction: Tensor<4>,
}

impl VqTokenizer {
    /// Codebook size.
    pub fn vocab_size(&self) -> usize {
        self.codebook.dims()[0]
    }

    /// Tokens per side.
    pub fn grid(&self) -> usize {
        self.grid
    }

    /// Pixels per token side.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    fn check_input(&self, imgs: &Tensor<4>) -> Result<()> {
        let [_, c, h, w] = imgs.dims();
        let side = self.grid * self.patch_size;
        ensure!(
            c == self.in_chans && h == side && w == side,
            "the tokenizer takes {}x{}x{side} images, got {c}x{h}x{w}: resize the data to {side} px (--img-size) or train a \
             tokenizer for it",
            self.in_chans,
            side
        );
        Ok(())
    }

    /// `imgs: [B, C, H, W] -> (encodings [B*L, D], ids [B*L])`.
    fn quantize(&self, imgs: Tensor<4>) -> (Tensor<2>, Tensor<1, Int>) {
        let [b, _, _, _] = imgs.dims();
        let z = self.encoder.forward(patchify(imgs, self.patch_size));
        let d = z.dims()[2];
        let z = z.reshape([b * self.grid * self.grid, d]);
        (z.clone(), nearest_code(z.detach(), self.codebook.val().detach()))
    }

    /// Token ids `[B, h*w]` (row-major patch order, as BEiT's targets) of normalised images `[B, C, H, W]`.
    pub fn encode_ids(&self, imgs: Tensor<4>) -> Result<Tensor<2, Int>> {
        self.check_input(&imgs)?;
        let b = imgs.dims()[0];
        let (_, ids) = self.quantize(imgs);
        Ok(ids.reshape([b, self.grid * self.grid]))
    }

    /// Images `[B, C, H, W]` decoded from token ids `[B, h*w]`.
    pub fn decode_ids(&self, ids: Tensor<2, Int>) -> Result<Tensor<4>> {
        let [b, l] = ids.dims();
        ensure!(l == self.grid * self.grid, "expected {} token ids per image, got {l}", self.grid * self.grid);
        let z = self.codebook.val().detach().select(0, ids.reshape([b * l]));
        Ok(self.decode(z, b))
    }

    fn decode(&self, z: Tensor<2>, b: usize) -> Tensor<4> {
        let d = z.dims()[1];
        let x = self.decoder.forward(z.reshape([b, self.grid * self.grid, d]));
        unpatchify(x, self.patch_size, (self.grid, self.grid), self.in_chans)
    }

    /// Quantises and reconstructs `imgs` (normalised `[B, C, H, W]`) with the straight-through
    /// estimator and returns the losses of the module documentation.
    pub fn forward_loss(&self, imgs: Tensor<4>) -> Result<TokenizerOutput> {
        self.check_input(&imgs)?;
        let b = imgs.dims()[0];
        let (z_e, ids) = self.quantize(imgs.clone());
        let z_q = self.codebook.val().detach().select(0, ids.clone());
        let commit_loss = (z_e.clone() - z_q.clone()).powi_scalar(2).mean();
        let z_st = z_e.clone() + (z_q - z_e.clone()).detach();
        let reconstruction = self.decode(z_st, b);
        let recon_loss = (reconstruction.clone() - imgs).powi_scalar(2).mean();
        let loss = recon_loss.clone() + commit_loss.clone().mul_scalar(self.beta);
        let l = self.grid * self.grid;
        Ok(TokenizerOutput {
            loss,
            recon_loss,
            commit_loss,
            ids: ids.reshape([b, l]),
            encodings: z_e.detach(),
            reconstruction,
        })
    }

    /// Moves the codebook towards the mean of the `encodings` (`[N, D]`, row-major) assigned to each
    /// code by `ids` ([`ema_step`]) and restarts dead codes at encodings drawn with `rng`.
    /// Returns how many codes were restarted.
    pub fn ema_update(&mut self, encodings: &[f32], ids: &[u32], rng: &mut impl Rng) -> usize {
        let [k, d] = self.codebook.dims();
        let host = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tensor");
        let mut state = EmaState {
            cluster_size: self
                .ema_cluster_size
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 tensor"),
            embed_sum: host(self.ema_embed_sum.val()),
            codebook: host(self.codebook.val()),
            dim: d,
        };
        let restarted = ema_step(&mut state, encodings, ids, self.ema_decay, self.ema_eps, self.restart_threshold, rng);
        let device = self.codebook.device();
        let put = |v: Vec<f32>, id| {
            Param::initialized(id, Tensor::<2>::from_data(TensorData::new(v, [k, d]), &device)).set_require_grad(false)
        };
        self.codebook = put(state.codebook, self.codebook.id);
        self.ema_embed_sum = put(state.embed_sum, self.ema_embed_sum.id);
        self.ema_cluster_size = Param::initialized(
            self.ema_cluster_size.id,
            Tensor::from_data(TensorData::new(state.cluster_size, [k]), &device),
        )
        .set_require_grad(false);
        restarted
    }
}

/// Index of the nearest row of `codebook: [K, D]` for every row of `z: [N, D]` (ties: the lowest
/// index). `|z|²` is the same for every code, so only `|e|² - 2 z·e` is compared.
pub fn nearest_code(z: Tensor<2>, codebook: Tensor<2>) -> Tensor<1, Int> {
    let n = z.dims()[0];
    let e2 = codebook.clone().powi_scalar(2).sum_dim(1).reshape([1, codebook.dims()[0]]);
    let scores = e2 - z.matmul(codebook.transpose()).mul_scalar(2.0);
    scores.argmin(1).reshape([n])
}

/// The codebook and its EMA statistics on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct EmaState {
    /// EMA counts `[K]`.
    pub cluster_size: Vec<f32>,
    /// EMA sums of assigned encodings `[K * D]`.
    pub embed_sum: Vec<f32>,
    /// Codebook `[K * D]`.
    pub codebook: Vec<f32>,
    /// Code width D.
    pub dim: usize,
}

/// One EMA codebook update (van den Oord et al. 2017, appendix A.1) with Laplace smoothing, then
/// dead-code restarts. With `n_k` encodings assigned to code k and their sum `s_k`:
/// `N_k <- γ N_k + (1-γ) n_k`, `m_k <- γ m_k + (1-γ) s_k`, `Ñ_k = (N_k + ε) / (Σ N + K ε) · Σ N`,
/// `e_k = m_k / Ñ_k`. Every code with `N_k < threshold` then moves to a random encoding of the
/// batch, its sum set to `e_k Ñ_k` so later updates keep it there until it is used.
pub fn ema_step(
    state: &mut EmaState,
    encodings: &[f32],
    ids: &[u32],
    decay: f64,
    eps: f64,
    threshold: f64,
    rng: &mut impl Rng,
) -> usize {
    let d = state.dim;
    let k = state.cluster_size.len();
    assert_eq!(encodings.len(), ids.len() * d, "one encoding per id");
    let mut counts = vec![0f64; k];
    let mut sums = vec![0f64; k * d];
    for (i, &id) in ids.iter().enumerate() {
        let id = id as usize;
        counts[id] += 1.0;
        for j in 0..d {
            sums[id * d + j] += encodings[i * d + j] as f64;
        }
    }
    let g = decay;
    for (n, &count) in state.cluster_size.iter_mut().zip(&counts) {
        *n = (g * *n as f64 + (1.0 - g) * count) as f32;
    }
    for (m, s) in state.embed_sum.iter_mut().zip(&sums) {
        *m = (g * *m as f64 + (1.0 - g) * s) as f32;
    }
    let total: f64 = state.cluster_size.iter().map(|&n| n as f64).sum();
    let smoothed: Vec<f64> =
        state.cluster_size.iter().map(|&n| (n as f64 + eps) / (total + k as f64 * eps) * total).collect();
    for (c, &n) in smoothed.iter().enumerate() {
        for j in 0..d {
            state.codebook[c * d + j] = (state.embed_sum[c * d + j] as f64 / n) as f32;
        }
    }
    let mut restarted = 0;
    if threshold > 0.0 && !ids.is_empty() {
        for c in (0..k).filter(|&c| (state.cluster_size[c] as f64) < threshold) {
            let src = rng.gen_range(0..ids.len());
            for j in 0..d {
                let v = encodings[src * d + j];
                state.codebook[c * d + j] = v;
                state.embed_sum[c * d + j] = (v as f64 * smoothed[c]) as f32;
            }
            restarted += 1;
        }
    }
    restarted
}

/// Perplexity `exp(-Σ p_k ln p_k)` of the code frequencies in `ids` (1 = one code, K = uniform use)
/// and the number of distinct codes used.
pub fn code_statistics(ids: &[u32], vocab_size: usize) -> (f64, usize) {
    let mut counts = vec![0usize; vocab_size];
    for &i in ids {
        counts[i as usize] += 1;
    }
    let n = ids.len().max(1) as f64;
    let entropy: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.ln()).sum();
    (entropy.exp(), counts.iter().filter(|&&c| c > 0).count())
}

/// Codebook usage over a sliding window of batches: the fraction of codes that occurred at least
/// once in the last `window` batches. Serialisable so a resumed run reports the same numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeUsage {
    /// Codebook size.
    pub vocab_size: usize,
    /// Batches in the window.
    pub window: usize,
    /// Distinct codes of each recent batch, oldest first.
    pub recent: std::collections::VecDeque<Vec<u32>>,
}

impl CodeUsage {
    /// An empty window of `window` batches over `vocab_size` codes.
    pub fn new(vocab_size: usize, window: usize) -> Self {
        Self { vocab_size, window: window.max(1), recent: Default::default() }
    }

    /// Adds a batch's ids, dropping the oldest batch when the window is full.
    pub fn push(&mut self, ids: &[u32]) {
        let mut seen = vec![false; self.vocab_size];
        ids.iter().for_each(|&i| seen[i as usize] = true);
        self.recent.push_back((0..self.vocab_size as u32).filter(|&i| seen[i as usize]).collect());
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
    }

    /// Fraction of the codebook used in the window (0 when empty).
    pub fn fraction(&self) -> f64 {
        let mut seen = vec![false; self.vocab_size];
        self.recent.iter().flatten().for_each(|&i| seen[i as usize] = true);
        seen.iter().filter(|&&s| s).count() as f64 / self.vocab_size as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;

    fn tiny() -> TokenizerConfig {
        TokenizerConfig {
            img_size: 8,
            patch_size: 4,
            in_chans: 1,
            vocab_size: 4,
            hidden_dim: 8,
            code_dim: 2,
            ..TokenizerConfig::preset("vq_tiny_28").unwrap()
        }
    }

    #[test]
    fn ema_step_matches_hand_computation() {
        // Two codes in 1-D; three encodings go to code 0, none to code 1.
        let mut s =
            EmaState { cluster_size: vec![1.0, 1.0], embed_sum: vec![2.0, 4.0], codebook: vec![2.0, 4.0], dim: 1 };
        let mut rng = InitRng::seed_from_u64(0);
        let restarted = ema_step(&mut s, &[1.0, 2.0, 3.0], &[0, 0, 0], 0.5, 1e-5, 0.0, &mut rng);
        assert_eq!(restarted, 0);
        // N = [0.5 + 1.5, 0.5] = [2, 0.5]; m = [1 + 3, 2] = [4, 2]; ΣN = 2.5.
        assert_eq!(s.cluster_size, vec![2.0, 0.5]);
        assert_eq!(s.embed_sum, vec![4.0, 2.0]);
        let smooth = |n: f64| (n + 1e-5) / (2.5 + 2e-5) * 2.5;
        assert!((s.codebook[0] as f64 - 4.0 / smooth(2.0)).abs() < 1e-6);
        assert!((s.codebook[1] as f64 - 2.0 / smooth(0.5)).abs() < 1e-6);
    }

    #[test]
    fn dead_codes_restart_at_batch_encodings() {
        let mut s =
            EmaState { cluster_size: vec![1.0, 1.0, 1.0], embed_sum: vec![0.0; 3], codebook: vec![0.0; 3], dim: 1 };
        let enc = [7.0, 8.0, 9.0, 10.0];
        let restarted = ema_step(&mut s, &enc, &[0, 0, 0, 0], 0.99, 1e-5, 1.0, &mut InitRng::seed_from_u64(3));
        assert_eq!(restarted, 2, "codes 1 and 2 were unused and fell below 1");
        assert!(enc.contains(&s.codebook[1]) && enc.contains(&s.codebook[2]));
        // The restarted code stays where it is through a later update in which it is unused.
        let before = s.codebook[1];
        ema_step(&mut s, &[8.5], &[0], 0.99, 1e-5, 0.0, &mut InitRng::seed_from_u64(4));
        assert!((s.codebook[1] - before).abs() < 1e-3 * before.abs(), "{} vs {before}", s.codebook[1]);
    }

    #[test]
    fn statistics_count_codes() {
        let (ppl, used) = code_statistics(&[0, 1, 2, 3], 8);
        assert!((ppl - 4.0).abs() < 1e-9);
        assert_eq!(used, 4);
        assert_eq!(code_statistics(&[5, 5, 5], 8), (1.0, 1));
        let mut u = CodeUsage::new(8, 2);
        u.push(&[0, 1]);
        u.push(&[1, 2]);
        assert_eq!(u.fraction(), 3.0 / 8.0);
        u.push(&[3]);
        assert_eq!(u.fraction(), 3.0 / 8.0, "the first batch left the window");
    }

    #[test]
    fn nearest_code_picks_the_closest_row() {
        let dev = Device::flex();
        let z = Tensor::<2>::from_data(TensorData::new(vec![0.9f32, 0.1, -2.0, -2.1, 0.0, 3.0], [3, 2]), &dev);
        let e = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 3.0, -2.0, -2.0], [3, 2]), &dev);
        assert_eq!(nearest_code(z, e).into_data().convert::<i64>().try_to_vec::<i64>().unwrap(), vec![0, 2, 1]);
    }

    #[test]
    fn straight_through_passes_the_decoder_gradient_to_the_encoder() {
        let dev = Device::flex().autodiff();
        let cfg = TokenizerConfig { beta: 0.0, ..tiny() };
        let model = cfg.init(1, &dev).unwrap();
        let x = Tensor::<4>::random([2, 1, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let out = model.forward_loss(x).unwrap();
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        // With β = 0 only the reconstruction reaches the encoder, through the straight-through path.
        let g = grads.get::<2>(model.encoder.layers[0].weight.id).expect("encoder gradient");
        assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
        assert!(grads.get::<2>(model.codebook.id).is_none(), "the codebook learns by EMA only");
    }

    #[test]
    fn encode_decode_shapes_and_errors() {
        let dev = Device::flex();
        let model = tiny().init(0, &dev).unwrap();
        let x = Tensor::<4>::zeros([3, 1, 8, 8], &dev);
        let ids = model.encode_ids(x).unwrap();
        assert_eq!(ids.dims(), [3, 4]);
        assert_eq!(model.decode_ids(ids).unwrap().dims(), [3, 1, 8, 8]);
        let err = model.encode_ids(Tensor::zeros([1, 3, 8, 8], &dev)).unwrap_err().to_string();
        assert!(err.contains("1x8x8"), "{err}");
        let err = TokenizerConfig { img_size: 30, ..tiny() }.validate().unwrap_err().to_string();
        assert!(err.contains("multiple of 4"), "{err}");
        let beit = BeitConfig::preset("beit_tiny_28").unwrap();
        TokenizerConfig::preset("vq_tiny_28").unwrap().check_matches(&beit).unwrap();
        assert!(TokenizerConfig::preset("vq_tiny_32").unwrap().check_matches(&beit).is_err());
    }

    #[test]
    fn ema_update_changes_only_the_codebook_state() {
        let dev = Device::flex();
        let mut model = tiny().init(0, &dev).unwrap();
        let x = Tensor::<4>::random([2, 1, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let out = model.forward_loss(x).unwrap();
        let enc = out.encodings.into_data().try_to_vec::<f32>().unwrap();
        let ids: Vec<u32> =
            out.ids.into_data().convert::<i64>().try_to_vec::<i64>().unwrap().into_iter().map(|i| i as u32).collect();
        let w0 = model.encoder.layers[0].weight.val().into_data();
        let restarted = model.ema_update(&enc, &ids, &mut InitRng::seed_from_u64(0));
        assert!(restarted <= 4);
        assert_eq!(model.encoder.layers[0].weight.val().into_data(), w0);
        let sizes = model.ema_cluster_size.val().into_data().try_to_vec::<f32>().unwrap();
        assert!((sizes.iter().sum::<f32>() - (0.99 * 4.0 + 0.01 * 8.0)).abs() < 1e-4, "{sizes:?}");
    }
}
