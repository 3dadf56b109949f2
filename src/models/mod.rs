//! Models: the shared ViT building blocks and what is built from them: the masked autoencoder,
//! BEiT, the Swin Transformer and SimMIM, the classifiers used by the evaluation protocols, and the
//! discrete visual tokenizers (VQ-VAE, DALL-E's encoder) whose ids BEiT predicts; and what
//! pretraining needs of a model ([`pretrain`]: the architecture a checkpoint records, the masking
//! and loss of each method).

pub mod beit;
pub mod classifier;
pub mod dalle;
pub mod init;
pub mod mae;
pub mod pretrain;
pub mod simmim;
pub mod swin;
pub mod tokenizer;
pub mod vit;

/// A named constructor of a model config: one row of a config's `PRESETS` table.
pub type Preset<C> = (&'static str, fn() -> C);

/// The config built by the preset called `name`, if there is one.
fn find_preset<C>(presets: &[Preset<C>], name: &str) -> Option<C> {
    presets.iter().find(|(n, _)| *n == name).map(|(_, build)| build())
}

/// The preset names, comma-separated: the choices an error message lists.
fn preset_names<C>(presets: &[Preset<C>]) -> String {
    presets.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::beit::BeitConfig;
    use super::mae::{MaeConfig, MaeTarget};
    use super::swin::SwinConfig;
    use super::tokenizer::TokenizerConfig;

    #[test]
    fn every_preset_name_builds_a_valid_config_and_unknown_names_list_the_choices() {
        fn check<C: PartialEq + std::fmt::Debug>(
            presets: &[super::Preset<C>],
            by_name: fn(&str) -> anyhow::Result<C>,
            valid: fn(&C) -> anyhow::Result<()>,
        ) {
            for (name, build) in presets {
                assert_eq!(by_name(name).unwrap(), build(), "{name}");
                valid(&build()).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let e = by_name("no_such_model").unwrap_err().to_string();
            assert!(e.contains("'no_such_model'") && e.contains(&super::preset_names(presets)), "{e}");
        }
        check(MaeConfig::PRESETS, MaeConfig::preset, MaeConfig::validate);
        check(BeitConfig::PRESETS, BeitConfig::preset, BeitConfig::validate);
        check(SwinConfig::PRESETS, SwinConfig::preset, SwinConfig::validate);
        check(TokenizerConfig::PRESETS, TokenizerConfig::preset, TokenizerConfig::validate);
        let mae_names: Vec<&str> = MaeConfig::PRESETS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            mae_names,
            [
                "mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14", "mae_tiny_28", "mae_tiny_32",
                "mae_micro"
            ]
        );
    }

    #[test]
    fn presets_keep_the_values_they_had_as_positional_closures() {
        // Field for field what `preset` built before the presets became named constructors.
        let mae = |img, patch, chans, dim, depth, heads, ddim, ddepth, dheads| MaeConfig {
            img_size: img,
            patch_size: patch,
            in_chans: chans,
            embed_dim: dim,
            depth,
            num_heads: heads,
            decoder_embed_dim: ddim,
            decoder_depth: ddepth,
            decoder_num_heads: dheads,
            mlp_ratio: 4.0,
            layer_norm_eps: crate::models::vit::LN_EPS,
            norm_pix_loss: true,
            encoder_mask_token: false,
            target: MaeTarget::Pixels,
        };
        assert_eq!(MaeConfig::vit_huge_patch14(), mae(224, 14, 3, 1280, 32, 16, 512, 8, 16));
        assert_eq!(MaeConfig::tiny_28(), mae(28, 4, 1, 192, 6, 3, 128, 2, 4));
        assert_eq!(MaeConfig::tiny_32(), mae(32, 4, 3, 192, 12, 3, 128, 4, 4));
        assert_eq!(MaeConfig::micro(), mae(28, 4, 1, 64, 2, 4, 32, 1, 4));
        let beit = BeitConfig::large_patch16_224();
        assert_eq!(
            (beit.img_size, beit.patch_size, beit.vocab_size, beit.embed_dim, beit.depth, beit.num_heads),
            (224, 16, 8192, 1024, 24, 16)
        );
        assert_eq!(
            (beit.layer_scale_init_value, beit.use_abs_pos_emb, beit.use_shared_rel_pos_bias, beit.init_std),
            (1e-5, false, true, 0.02)
        );
        let beit = BeitConfig::tiny_28();
        assert_eq!(
            (beit.img_size, beit.patch_size, beit.in_chans, beit.vocab_size, beit.embed_dim, beit.depth),
            (28, 4, 1, 512, 192, 6)
        );
        assert_eq!((beit.num_heads, beit.layer_scale_init_value), (3, 0.1));
        let swin = SwinConfig::base_patch4_window7_224();
        assert_eq!(
            (swin.img_size, swin.patch_size, swin.embed_dim, swin.window_size, swin.num_classes),
            (224, 4, 128, 7, 1000)
        );
        assert_eq!((swin.depths, swin.num_heads, swin.drop_path_rate), (vec![2, 2, 18, 2], vec![4, 8, 16, 32], 0.1));
        let swin = SwinConfig::tiny_28();
        assert_eq!(
            (swin.img_size, swin.patch_size, swin.in_chans, swin.embed_dim, swin.window_size, swin.num_classes),
            (28, 2, 1, 48, 7, 10)
        );
        assert_eq!((swin.depths, swin.num_heads), (vec![2, 6], vec![3, 6]));
        let vq = TokenizerConfig::tiny_32();
        assert_eq!(
            (vq.img_size, vq.patch_size, vq.in_chans, vq.vocab_size, vq.hidden_dim, vq.code_dim),
            (32, 4, 3, 512, 256, 32)
        );
        assert_eq!((vq.beta, vq.ema_decay, vq.ema_eps, vq.restart_threshold), (0.25, 0.99, 1e-5, 1.0));
    }
}
