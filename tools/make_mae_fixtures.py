#!/usr/bin/env python3
"""Reference fixtures for mim's MAE parity tests, from Hugging Face `ViTMAEForPreTraining`.

A tiny ViTMAE (16x16x3 images, patch 4, encoder 32 wide x 2 blocks, decoder 24 wide x 2 blocks)
with fixed, perturbed weights (so biases and LayerNorm weights are not trivially 0/1) runs on fixed
pixels and fixed masking noise. The Rust test `tests/parity_hf.rs` loads the same weights through
mim's Hugging Face loader and compares the forward pass, loss and every parameter gradient.

Run (the venv of ../shared/peer/README.md has what it needs):
    ~/.mim-peer-venv/bin/python tools/make_mae_fixtures.py

Writes tests/fixtures/:
    mae_tiny_weights.safetensors  HF state_dict (HF key names), as a user's HF checkpoint
    mae_tiny_io.safetensors       inputs, noise, outputs, gradients (`grad.<hf name>`)
    mae_tiny_config.json          HF config + versions + tensor descriptions
"""
import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
CONFIG = dict(
    image_size=16, patch_size=4, num_channels=3,
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    decoder_hidden_size=24, decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=96,
    mask_ratio=0.75, norm_pix_loss=True, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
BATCH = 2


def sincos(dim, grid):
    """HF's fixed position embedding, with the half swap HF applies to match the official layout.

    transformers 5.x leaves both position embeddings at zero when a model is built from a config
    (its `_init_weights` zeroes `decoder_pos_embed`); published checkpoints carry the real values,
    so the fixture sets them as those checkpoints have them."""
    pe = build_2d_sinusoidal_position_embedding(height=grid, width=grid, embed_dim=dim, cls_token=True)
    half = dim // 2
    return torch.cat([pe[..., half:], pe[..., :half]], dim=-1).unsqueeze(0)


def main():
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**CONFIG)).float().eval()
    grid = CONFIG["image_size"] // CONFIG["patch_size"]
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.copy_(sincos(CONFIG["hidden_size"], grid))
        model.decoder.decoder_pos_embed.copy_(sincos(CONFIG["decoder_hidden_size"], grid))
        # Perturb every trainable tensor: a loader that drops a bias or swaps q/k/v must fail.
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(BATCH, 3, 16, 16)
    noise = torch.rand(BATCH, (16 // 4) ** 2)

    out = model(pixel_values=x, noise=noise)
    out.loss.backward()
    patches = model.patchify(x)
    per_patch = ((out.logits - patches) ** 2).mean(-1)
    loss_raw = (per_patch * out.mask).sum() / out.mask.sum()
    with torch.no_grad():
        enc = model.vit(pixel_values=x, noise=noise).last_hidden_state
    len_keep = int(noise.shape[1] * (1 - CONFIG["mask_ratio"]))

    io = {
        "pixel_values": x, "noise": noise,
        "loss": out.loss.detach().reshape(1), "loss_no_norm_pix": loss_raw.detach().reshape(1),
        "logits": out.logits.detach(), "mask": out.mask.detach(),
        "ids_restore": out.ids_restore.to(torch.int64), "ids_keep": torch.argsort(noise, dim=1)[:, :len_keep].to(torch.int64),
        "encoder_last_hidden_state": enc, "patchified": patches,
    }
    for name, p in model.named_parameters():
        if p.grad is not None:
            io[f"grad.{name}"] = p.grad.detach()
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "mae_tiny_weights.safetensors")
    save_file({k: v.contiguous() for k, v in io.items()}, OUT / "mae_tiny_io.safetensors")
    meta = dict(CONFIG, batch=BATCH, seed=0, torch=torch.__version__, transformers=transformers.__version__,
                tensors={
                    "pixel_values": "[B,3,16,16] model input", "noise": "[B,16] masking noise passed as noise=",
                    "loss": "HF loss (norm_pix_loss=True)", "loss_no_norm_pix": "masked MSE on raw patch pixels, same logits",
                    "logits": "[B,16,48] decoder predictions", "mask": "[B,16] 1 = removed",
                    "ids_restore": "[B,16]", "ids_keep": "[B,4] argsort(noise)[:, :len_keep]",
                    "encoder_last_hidden_state": "[B,5,32] model.vit output, cls first",
                    "patchified": "[B,16,48] model.patchify(pixel_values)",
                    "grad.<name>": "d loss / d parameter, HF names",
                })
    (OUT / "mae_tiny_config.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"loss {out.loss.item():.6f}  raw-pixel loss {loss_raw.item():.6f}  torch {torch.__version__}  transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
