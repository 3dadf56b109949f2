#!/usr/bin/env python3
"""Reference fixtures for mim's MAE parity tests, from Hugging Face `ViTMAEForPreTraining`.

Purpose: a tiny ViTMAE (16x16x3 images, patch 4, encoder 32 wide x 2 blocks, decoder 24 wide x 2
blocks) with fixed, perturbed weights runs on fixed pixels and fixed masking noise. The query and key
projections are scaled up (QK_GAIN) so the attention logits spread over O(1) and the attention scale
matters (printed per layer and recorded in the config json). The Rust test `tests/parity_hf.rs` loads
the same weights through mim's HF loader and compares masking, encoder output, predictions, both
losses and every parameter gradient (fused qkv gradients also as q, k and v parts).

Run (venv setup in tools/README.md):
    ~/.mim-peer-venv/bin/python tools/make_mae_fixtures.py

Writes tests/fixtures/ (about 0.4 MB in all), then reloads them and re-checks the loss:
    mae_tiny_weights.safetensors  full HF state_dict, HF's own key names, float32 (a user's HF checkpoint)
    mae_tiny_io.safetensors       inputs, noise, outputs, gradients (`grad.<hf name>`)
    mae_tiny_config.json          HF config + batch, seed, q/k gains, attention spread, versions, tensor descriptions

Generated with torch 2.15.0 (CPU) and transformers 5.24.0 (recorded in the config json too).
transformers 5.x names layers `vit.layers.N.attention.q_proj`; 4.x checkpoints use
`vit.encoder.layer.N.attention.attention.query` (HF renames them on load).
"""
import json
import pathlib

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from attention_spread import summarise_attention

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
CONFIG = dict(
    image_size=16, patch_size=4, num_channels=3,
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    decoder_hidden_size=24, decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=96,
    mask_ratio=0.75, norm_pix_loss=True, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
BATCH, SEED = 2, 0
DESCRIPTIONS = {
    "pixel_values": "[B,3,16,16] model input, randn", "noise": "[B,16] masking noise, rand, passed as noise=",
    "loss": "[1] HF loss (norm_pix_loss=True: per-patch mean/unbiased var, eps 1e-6), masked mean",
    "loss_no_norm_pix": "[1] same logits, raw patch targets: ((logits - patchified)**2).mean(-1), masked mean",
    "logits": "[B,16,48] decoder predictions, cls removed", "mask": "[B,16] float, 1 = removed (masked), 0 = kept",
    "ids_restore": "[B,16] int64, argsort(argsort(noise))", "ids_keep": "[B,4] int64, argsort(noise)[:, :len_keep]",
    "encoder_last_hidden_state": "[B,5,32] model.vit output after final layernorm, cls first, kept tokens in ids_keep order",
    "patchified": "[B,16,48] model.patchify(pixel_values), (p, q, c) order within a patch",
    "grad.<name>": "d loss / d parameter for every parameter with requires_grad, HF names and shapes",
}
# Gains on the query and key projection weights (the value projection is left alone): with 0.02-scale
# weights q.k/sqrt(d) has a row std of about 0.02 and the attention is uniform to 1e-3, so a test
# would barely notice a wrong attention scale. These gains spread the logits over O(1) (row std about
# 2, printed by attention_spread), so the scale, q and k matter. The decoder's inputs are mostly the
# shared mask token, hence its larger gain.
QK_GAIN = {"vit.": 10.0, "decoder.": 14.0}


def sincos(dim, grid):
    """HF's fixed position embedding, with the half swap HF applies to match the official MAE layout.

    transformers 5.x leaves both position embeddings (and cls/mask tokens) at zero when a model is
    built from a config; published checkpoints carry the sin-cos values, so we set them as HF's own
    `initialize_weights` computes them."""
    pe = build_2d_sinusoidal_position_embedding(height=grid, width=grid, embed_dim=dim, cls_token=True)
    half = dim // 2
    return torch.cat([pe[..., half:], pe[..., :half]], dim=-1).unsqueeze(0)


def official_sincos(dim, grid):
    """facebookresearch/mae `get_2d_sincos_pos_embed`, as an independent check of the layout."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    g = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # w first, as upstream
    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def build():
    torch.manual_seed(SEED)
    # eval(): dropout is 0 anyway; this also rules out any other train-only randomness.
    model = ViTMAEForPreTraining(ViTMAEConfig(**CONFIG)).float().eval()
    grid = CONFIG["image_size"] // CONFIG["patch_size"]
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.copy_(sincos(CONFIG["hidden_size"], grid))
        model.decoder.decoder_pos_embed.copy_(sincos(CONFIG["decoder_hidden_size"], grid))
        # Perturb every trainable tensor: a loader that drops a bias or swaps q/k/v must fail.
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
        for name, p in model.named_parameters():
            if name.endswith(("attention.q_proj.weight", "attention.k_proj.weight")):
                p.mul_(next(g for prefix, g in QK_GAIN.items() if name.startswith(prefix)))
    x = torch.randn(BATCH, 3, 16, 16)
    noise = torch.rand(BATCH, grid * grid)
    return model, x, noise


def attention_spread(model, x, noise):
    """Per attention layer: the row std of the scaled logits q.k/sqrt(d) and the attention entropy
    as a fraction of log(tokens) (1 = uniform), recomputed from each layer's input."""
    spread, hooks = {}, []
    for name, m in model.named_modules():
        if type(m).__name__ == "ViTMAEAttention":
            def hook(m, args, kwargs, out, name=name):
                h = args[0] if args else kwargs["hidden_states"]
                b, n, _ = h.shape
                q, k = (proj(h).view(b, n, -1, m.head_dim).transpose(1, 2) for proj in (m.q_proj, m.k_proj))
                logits = (q @ k.transpose(-1, -2)) * m.scaling
                p = logits.softmax(-1)
                entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item() / np.log(n)
                spread[name] = (logits.std(-1).mean().item(), entropy)
            hooks.append(m.register_forward_hook(hook, with_kwargs=True))
    return summarise_attention(hooks, lambda: model(pixel_values=x, noise=noise), spread)


def run(model, x, noise):
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
        if p.requires_grad:
            io[f"grad.{name}"] = p.grad.detach()
    return {k: v.contiguous() for k, v in io.items()}


def verify(paths):
    """Reload both files into a fresh model and recompute: the fixtures must reproduce themselves."""
    weights, io = load_file(paths[0]), load_file(paths[1])
    model = ViTMAEForPreTraining(ViTMAEConfig(**CONFIG)).float().eval()
    model.load_state_dict(weights, strict=True)
    for name, dim in [("vit.embeddings.position_embeddings", 32), ("decoder.decoder_pos_embed", 24)]:
        assert np.allclose(weights[name][0].double().numpy(), official_sincos(dim, 4), atol=1e-6), name
    again = run(model, io["pixel_values"], io["noise"])
    assert abs(again["loss"].item() - io["loss"].item()) <= 1e-6, (again["loss"], io["loss"])
    for k, v in io.items():
        assert torch.allclose(again[k].double(), v.double(), atol=1e-6), k
    for label, tensors in [("weights", weights), ("io", io)]:
        print(f"{label}: {len(tensors)} tensors")
        for k, v in tensors.items():
            print(f"  {k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}")
    print(f"loss {io['loss'].item():.8f}  raw-pixel loss {io['loss_no_norm_pix'].item():.8f}")
    print("sizes:", ", ".join(f"{p.name} {p.stat().st_size} B" for p in paths), f"total {sum(p.stat().st_size for p in paths)} B")


def main():
    model, x, noise = build()
    print("attention spread:")
    spread = attention_spread(model, x, noise)
    io = run(model, x, noise)
    OUT.mkdir(parents=True, exist_ok=True)
    paths = [OUT / "mae_tiny_weights.safetensors", OUT / "mae_tiny_io.safetensors", OUT / "mae_tiny_config.json"]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, paths[0])
    save_file(io, paths[1])
    meta = dict(CONFIG, batch=BATCH, seed=SEED, qk_gain=QK_GAIN, attention_spread=spread, torch=torch.__version__,
                transformers=transformers.__version__, tensors=DESCRIPTIONS)
    paths[2].write_text(json.dumps(meta, indent=1) + "\n")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}")
    verify(paths)


if __name__ == "__main__":
    main()
