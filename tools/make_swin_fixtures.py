#!/usr/bin/env python3
"""Reference fixtures for mim's Swin Transformer and SimMIM parity tests, from timm's `SwinTransformer`.

Purpose: a tiny timm Swin (32x32x3 images, patch 2, widths 8/16/32, depths 2-2-2, heads 2-2-4,
window 4, 5 classes) with fixed, perturbed weights, the query and key rows of every qkv weight
scaled up (QK_GAIN) so the attention logits spread over O(1) and the attention scale matters
(printed per block and recorded in the config json). Stages 0 and 1 (16 and 8 tokens a side) use
shifted windows with the attention mask; stage 2 (4 a side) is one window, so timm neither shifts
nor masks it; stages 1 and 2 start with patch merging. The Rust test `tests/parity_swin.rs` loads the
timm-named weights through mim's loader and compares every stage's features, pooled features, logits,
a loss and every parameter gradient (qkv gradients also as q, k and v parts); then the same for
SimMIM.

SimMIM: the official `SwinTransformerForSimMIM.forward` + `SimMIM` (microsoft/SimMIM models/simmim.py)
reproduced on a timm Swin without head (timm's blocks are channels-last, so the mask blend and the
decoder permute accordingly): mask token blended in after the patch embedding, stages, norm,
Conv2d 1x1 to stride^2 * 3 channels, PixelShuffle(stride), L1 loss on masked pixels divided by
(masked pixels + 1e-5) and by in_chans. The mask is drawn on a 4x4 grid of 8 px mask patches and
repeated onto the 16x16 model patch grid, as the official generator does.

Run (venv setup in tools/README.md):
    ~/.mim-peer-venv/bin/python tools/make_swin_fixtures.py

Writes tests/fixtures/ (about 0.7 MB in all), then reloads them and re-checks every output:
    swin_tiny_weights.safetensors    timm SwinTransformer state_dict, timm key names, float32
    swin_tiny_simmim.safetensors     official SimMIM state_dict (encoder.*, encoder.mask_token, decoder.0.*)
    swin_tiny_io.safetensors         inputs, outputs, gradients (`grad.<timm name>`, `simmim_grad.<name>`)
    swin_tiny_config.json            timm arguments, batch, seed, q/k gains, attention spread, versions,
                                     tensor descriptions

Generated with torch 2.15.0 (CPU) and timm 1.0.31 (recorded in the config json too).
"""
import json
import math
import pathlib

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from attention_spread import summarise_attention

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
CONFIG = dict(
    img_size=32, patch_size=2, in_chans=3, num_classes=5, embed_dim=8, depths=(2, 2, 2), num_heads=(2, 2, 4),
    window_size=4, mlp_ratio=4.0, drop_path_rate=0.0,
)
BATCH, SEED, MASK_PATCH, MASK_RATIO = 2, 0, 8, 0.6
STRIDE = CONFIG["patch_size"] * 2 ** (len(CONFIG["depths"]) - 1)
DESCRIPTIONS = {
    "pixel_values": "[B,3,32,32] input, randn",
    "stage.<i>": "[B,H_i,W_i,C_i] output of model.layers[i] (channels last, before the final norm)",
    "features": "[B,4,4,32] model.forward_features (after the final norm)",
    "pooled": "[B,32] forward_head(pre_logits=True)", "logits": "[B,5] model(pixel_values)",
    "logit_weights": "[B,5] randn; cls_loss = (logits * logit_weights).sum()", "cls_loss": "[1]",
    "grad.<name>": "d cls_loss / d parameter, timm names and shapes",
    "relative_position_index": "[16,16] timm buffer of window 4 (as float)",
    "attn_mask.<i>": "[nW,16,16] timm shifted-window mask of stage i (0 / -100)",
    "mask_grid": "[B,4,4] SimMIM mask on 8 px mask patches, 1 = masked",
    "mask": "[B,256] mask_grid repeated 4x4 onto the 16x16 model patch grid, row-major",
    "simmim_loss": "[1] official SimMIM loss", "simmim_reconstruction": "[B,3,32,32] decoder output x_rec",
    "simmim_grad.<name>": "d simmim_loss / d parameter, official SimMIM names and shapes",
}
# Gains per stage on the query and key rows of every qkv weight (the value rows are left alone): after
# the 0.1 perturbation q.k/sqrt(d) has a row std of only 0.07-0.26, so the relative position bias
# alone shapes the attention and a test would barely notice a wrong attention scale. These gains
# spread the logits over O(1) (row std about 2, printed by attention_spread), so the scale, q and k
# matter. Narrower stages get larger gains.
QK_GAIN = (5.0, 4.0, 3.0)


class SimMIM(nn.Module):
    """Official SwinTransformerForSimMIM + SimMIM, on timm's (channels-last) Swin without head."""

    def __init__(self, encoder, encoder_stride):
        super().__init__()
        self.encoder = encoder
        self.encoder.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.trunc_normal_(self.encoder.mask_token, mean=0.0, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, encoder_stride ** 2 * 3, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )
        self.in_chans, self.patch_size = encoder.in_chans, CONFIG["patch_size"]

    def forward(self, x, mask):
        enc = self.encoder
        z = enc.patch_embed(x)  # [B, H, W, C]
        w = mask.unsqueeze(-1).type_as(z)
        z = z * (1.0 - w) + enc.mask_token * w
        z = enc.norm(enc.layers(z)).permute(0, 3, 1, 2)
        x_rec = self.decoder(z)
        mask = mask.repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2).unsqueeze(1).contiguous()
        loss_recon = F.l1_loss(x, x_rec, reduction="none")
        loss = (loss_recon * mask).sum() / (mask.sum() + 1e-5) / self.in_chans
        return loss, x_rec


def perturb(model):
    """Every parameter moves off its init, so a loader that drops a bias or mixes up an order fails;
    relative position tables and the mask token get O(1) values so they matter; q and k get the
    stage's QK_GAIN so the attention logits do."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table") or name.endswith("mask_token"):
                p.normal_(0.0, 1.0)
            else:
                p.add_(0.1 * torch.randn_like(p))
        for layer, gain in zip(model.layers, QK_GAIN, strict=True):
            for blk in layer.blocks:
                d = blk.attn.qkv.weight.shape[0] // 3
                blk.attn.qkv.weight[: 2 * d].mul_(gain)


def build():
    torch.manual_seed(SEED)
    model = SwinTransformer(**CONFIG).float().eval()
    perturb(model)
    encoder = SwinTransformer(**dict(CONFIG, num_classes=0)).float().eval()
    encoder.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")}, strict=True)
    simmim = SimMIM(encoder, STRIDE).float().eval()
    with torch.no_grad():
        simmim.encoder.mask_token.normal_(0.0, 1.0)
        for p in simmim.decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(BATCH, 3, 32, 32)
    logit_weights = torch.randn(BATCH, CONFIG["num_classes"])
    g = CONFIG["img_size"] // MASK_PATCH
    mask_grid = (torch.rand(BATCH, g * g).argsort(1).argsort(1) < int(MASK_RATIO * g * g)).float().reshape(BATCH, g, g)
    return model, simmim, x, logit_weights, mask_grid


def attention_spread(model, call):
    """Per block: the row std of the scaled logits q.k/sqrt(d) (recomputed from the block's attention
    input) and the entropy of the attention the block computes (relative position bias and shift mask
    included) as a fraction of log(tokens per window), 1 = uniform."""
    spread, hooks = {}, []
    for name, m in model.named_modules():
        if type(m).__name__ != "WindowAttention":
            continue
        assert not m.fused_attn, "timm's fused path ignores attn.scale"
        def logits(m, args, kwargs, name=name):
            x = args[0]
            b, n, _ = x.shape
            q, k, _ = m.qkv(x).reshape(b, n, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
            spread[name] = [(q @ k.transpose(-1, -2) * m.scale).std(-1).mean().item()]
        def entropy(m, args, out, name=name):
            p = args[0]  # attn_drop's input: the softmax probabilities
            spread[name].append(-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item() / math.log(p.shape[-1]))
        hooks += [m.register_forward_pre_hook(logits, with_kwargs=True), m.attn_drop.register_forward_hook(entropy)]
    return summarise_attention(hooks, call, spread)


def run(model, simmim, x, logit_weights, mask_grid):
    io = {"pixel_values": x, "logit_weights": logit_weights, "mask_grid": mask_grid}
    with torch.no_grad():
        h = model.patch_embed(x)
        for i, layer in enumerate(model.layers):
            h = layer(h)
            io[f"stage.{i}"] = h
        io["features"] = model.forward_features(x)
        io["pooled"] = model.forward_head(io["features"], pre_logits=True)
        for i, layer in enumerate(model.layers):
            if layer.blocks[1].attn_mask is not None:
                io[f"attn_mask.{i}"] = layer.blocks[1].attn_mask
        io["relative_position_index"] = model.layers[0].blocks[0].attn.relative_position_index.float()
    logits = model(x)
    loss = (logits * logit_weights).sum()
    loss.backward()
    io["logits"], io["cls_loss"] = logits.detach(), loss.detach().reshape(1)
    io.update({f"grad.{n}": p.grad.detach() for n, p in model.named_parameters()})

    scale = MASK_PATCH // CONFIG["patch_size"]
    mask = mask_grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    sloss, rec = simmim(x, mask)
    sloss.backward()
    io["mask"] = mask.reshape(BATCH, -1)
    io["simmim_loss"], io["simmim_reconstruction"] = sloss.detach().reshape(1), rec.detach()
    io.update({f"simmim_grad.{n}": p.grad.detach() for n, p in simmim.named_parameters()})
    return {k: v.contiguous() for k, v in io.items()}


def verify(paths):
    """Reload the files into fresh models and recompute: the fixtures must reproduce themselves."""
    weights, sweights, io = (load_file(p) for p in paths[:3])
    model = SwinTransformer(**CONFIG).float().eval()
    model.load_state_dict(weights, strict=True)
    simmim = SimMIM(SwinTransformer(**dict(CONFIG, num_classes=0)).float().eval(), STRIDE).float().eval()
    simmim.load_state_dict(sweights, strict=True)
    again = run(model, simmim, io["pixel_values"], io["logit_weights"], io["mask_grid"])
    assert again.keys() == io.keys()
    for k, v in io.items():
        assert torch.allclose(again[k].double(), v.double(), atol=1e-6), k
    assert any(k.startswith("attn_mask.") for k in io) and "attn_mask.2" not in io, "stage 2 must not shift"
    print(f"weights {len(weights)} tensors, simmim {len(sweights)}, io {len(io)}")
    print(f"cls_loss {io['cls_loss'].item():.8f}  simmim_loss {io['simmim_loss'].item():.8f}  masked patches {io['mask'].sum().item():.0f}")
    print("sizes:", ", ".join(f"{p.name} {p.stat().st_size} B" for p in paths), f"total {sum(p.stat().st_size for p in paths)} B")


def main():
    model, simmim, x, logit_weights, mask_grid = build()
    print("attention spread, classifier:")
    spread = attention_spread(model, lambda: model(x))
    scale = MASK_PATCH // CONFIG["patch_size"]
    mask = mask_grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    print("attention spread, SimMIM (masked input):")
    spread.update(attention_spread(simmim, lambda: simmim(x, mask)))
    io = run(model, simmim, x, logit_weights, mask_grid)
    OUT.mkdir(parents=True, exist_ok=True)
    paths = [OUT / f"swin_tiny_{n}" for n in ["weights.safetensors", "simmim.safetensors", "io.safetensors", "config.json"]]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, paths[0])
    save_file({k: v.contiguous() for k, v in simmim.state_dict().items()}, paths[1])
    save_file(io, paths[2])
    meta = dict(CONFIG, batch=BATCH, seed=SEED, mask_patch_size=MASK_PATCH, mask_ratio=MASK_RATIO, encoder_stride=STRIDE,
                qk_gain=QK_GAIN, attention_spread=spread, torch=torch.__version__, timm=timm.__version__, tensors=DESCRIPTIONS)
    paths[3].write_text(json.dumps(meta, indent=1) + "\n")
    print(f"torch {torch.__version__}  timm {timm.__version__}")
    verify(paths)


if __name__ == "__main__":
    main()
