#!/usr/bin/env python3
"""Reference fixtures for mim's BEiT parity tests (tests/parity_beit.rs).

Purpose: a tiny BEiT for masked image modeling (16x16x3 images, patch 4, 32 wide, 2 blocks, 2 heads,
16 visual tokens) with fixed, perturbed weights runs on fixed pixels, a fixed boolean mask (a different
number of masked patches per image) and fixed target token ids. The Rust test loads the same weights
through mim's BEiT loader and compares encoder features, masked-position logits, the cross-entropy
loss and every parameter gradient (qkv gradients also as q, k and v parts). The query and key rows of
every qkv weight are scaled up (QK_GAIN) so the attention logits spread over O(1) and the attention
scale matters (printed per block and recorded in the config json).

The model is microsoft/unilm `beit/modeling_pretrain.py` `VisionTransformerForMaskedImageModeling`
(MIT licence, Copyright (c) 2021 Microsoft), assembled below from timm's BEiT pieces
(`timm.models.beit.Block`, `RelativePositionBias`, `timm.layers.PatchEmbed`), which have unilm's
parameter names and math: qkv with q_bias / v_bias and a zero key bias, the relative position table
`[(2Wh-1)(2Ww-1)+3, H]` with the cls entries last, layer scale `gamma_1` / `gamma_2`. Only the MIM
wrapper (mask token, cls token, shared bias, final norm, lm_head on masked positions) is written
here, following unilm's `forward_features` / `forward`.

Two variants:
    shared  BEiT pretraining's settings: shared relative position bias, no absolute position
            embedding, layer scale 0.1
    block   the options: per-block relative position bias, learned absolute position embedding,
            no layer scale

Run (venv setup in tools/README.md):
    ~/.mim-peer-venv/bin/python tools/make_beit_fixtures.py

Writes tests/fixtures/ (about 0.2 MB in all), then reloads and recomputes:
    beit_tiny_<variant>_weights.safetensors  official (unilm) state-dict keys, PyTorch layout, float32,
                                             including unilm's persistent relative_position_index buffers
    beit_tiny_<variant>_io.safetensors       inputs, outputs, gradients (`grad.<official name>`)
    beit_tiny_config.json                    mim BeitConfig of each variant, batch, seed, q/k gain,
                                             attention spread, versions

Generated with torch 2.15.0 (CPU) and timm 1.0.31 (recorded in the config json too).
"""
import json
import pathlib
from functools import partial

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.beit import Block, RelativePositionBias, gen_relative_position_index

from attention_spread import summarise_attention

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
BASE = dict(img_size=16, patch_size=4, in_chans=3, vocab_size=16, embed_dim=32, depth=2, num_heads=2,
            mlp_ratio=4.0, init_std=0.02)
VARIANTS = {
    "shared": dict(BASE, layer_scale_init_value=0.1, use_abs_pos_emb=False, use_rel_pos_bias=False,
                   use_shared_rel_pos_bias=True),
    "block": dict(BASE, layer_scale_init_value=0.0, use_abs_pos_emb=True, use_rel_pos_bias=True,
                  use_shared_rel_pos_bias=False),
}
BATCH, SEED = 2, 0
DESCRIPTIONS = {
    "pixel_values": "[B,3,16,16] model input, randn",
    "bool_masked_pos": "[B,16] int64, 1 = masked; counts differ per image",
    "token_ids": "[B,16] int64 visual-token targets of every patch, randint(0, vocab)",
    "features": "[B,17,32] forward_features: final norm output, cls first",
    "logits": "[M,16] lm_head of the masked positions, row-major (image, patch) order",
    "loss": "[1] mean cross-entropy of logits against token_ids[bool_masked_pos]",
    "grad.<name>": "d loss / d parameter for every parameter, official names and shapes",
}
# Gain on the query and key rows of every qkv weight (the value rows are left alone): with 0.02-scale
# weights q.k/sqrt(d) has a row std of about 0.015, so only the relative position bias shapes the
# attention and a test would barely notice a wrong attention scale. This gain spreads the logits over
# O(1) (row std about 2, printed by attention_spread), so the scale, q and k matter.
QK_GAIN = 12.0


class BeitForMaskedImageModeling(nn.Module):
    """unilm's VisionTransformerForMaskedImageModeling on timm's BEiT blocks (dropout and drop path 0)."""

    def __init__(self, img_size, patch_size, in_chans, vocab_size, embed_dim, depth, num_heads, mlp_ratio,
                 layer_scale_init_value, use_abs_pos_emb, use_rel_pos_bias, use_shared_rel_pos_bias, init_std):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 1, embed_dim)) if use_abs_pos_emb else None
        self.rel_pos_bias = RelativePositionBias(window_size=grid, num_heads=num_heads) if use_shared_rel_pos_bias else None
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, qkv_bias=True, mlp_ratio=mlp_ratio, init_values=layer_scale_init_value or None,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6), window_size=grid if use_rel_pos_bias else None)
            for _ in range(depth)])
        for blk in self.blocks:
            blk.attn.fused_attn = False  # the explicit softmax(q k^T * scale + bias) path, as unilm
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.lm_head = nn.Linear(embed_dim, vocab_size)
        # unilm's initialisation: trunc normal at +-1 std, zero biases, then fix_init_weight.
        tn = partial(trunc_normal_, std=init_std, a=-init_std, b=init_std)
        for p in [self.pos_embed, self.cls_token, self.mask_token, self.lm_head.weight]:
            if p is not None:
                tn(p)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                tn(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for layer_id, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_((2.0 * layer_id) ** 0.5)
            blk.mlp.fc2.weight.data.div_((2.0 * layer_id) ** 0.5)

    def forward_features(self, x, bool_masked_pos):
        x = self.patch_embed(x)
        b, l, _ = x.shape
        w = bool_masked_pos.unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token.expand(b, l, -1) * w
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        for blk in self.blocks:
            x = blk(x, shared_rel_pos_bias=rel_pos_bias)
        return self.norm(x)

    def forward(self, x, bool_masked_pos):
        x = self.forward_features(x, bool_masked_pos)[:, 1:]
        return self.lm_head(x[bool_masked_pos])


def official_state_dict(model, grid):
    """The state dict as unilm saves it: timm keeps relative_position_index non-persistent, unilm does not."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    index = gen_relative_position_index(grid)
    if model.rel_pos_bias is not None:
        sd["rel_pos_bias.relative_position_index"] = index.clone()
    for i, blk in enumerate(model.blocks):
        if blk.attn.relative_position_bias_table is not None:
            sd[f"blocks.{i}.attn.relative_position_index"] = index.clone()
    return sd


def build(cfg):
    torch.manual_seed(SEED)
    model = BeitForMaskedImageModeling(**cfg).float().eval()
    with torch.no_grad():
        # Perturb every parameter: a loader that drops a bias or swaps q/v must fail. The relative
        # position tables start at zero; give them a bias large enough to matter.
        for name, p in model.named_parameters():
            p.add_((0.5 if "relative_position_bias_table" in name else 0.02) * torch.randn_like(p))
        for blk in model.blocks:
            d = blk.attn.qkv.weight.shape[0] // 3
            blk.attn.qkv.weight[: 2 * d].mul_(QK_GAIN)
    grid = cfg["img_size"] // cfg["patch_size"]
    x = torch.randn(BATCH, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    mask = torch.zeros(BATCH, grid * grid, dtype=torch.bool)
    mask[0, [1, 2, 5, 6, 9, 10]] = True  # a 3x2 block
    mask[1, torch.randperm(grid * grid)[:9]] = True
    token_ids = torch.randint(0, cfg["vocab_size"], (BATCH, grid * grid))
    return model, x, mask, token_ids


def attention_spread(model, x, mask):
    """Per block: the row std of the scaled logits q.k/sqrt(d) (recomputed from the block's attention
    input) and the entropy of the attention the block computes (relative position bias included) as a
    fraction of log(tokens), 1 = uniform."""
    spread, hooks = {}, []
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        def logits(m, args, kwargs, i=i):
            x = args[0]
            b, n, _ = x.shape
            bias = torch.cat((m.q_bias, torch.zeros_like(m.q_bias), m.v_bias))
            q, k, _ = F.linear(x, m.qkv.weight, bias).reshape(b, n, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
            spread[f"blocks.{i}.attn"] = [(q @ k.transpose(-1, -2) * m.scale).std(-1).mean().item()]
        def entropy(m, args, out, i=i):
            p = args[0]  # attn_drop's input: the softmax probabilities
            spread[f"blocks.{i}.attn"].append(-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item() / np.log(p.shape[-1]))
        hooks += [attn.register_forward_pre_hook(logits, with_kwargs=True), attn.attn_drop.register_forward_hook(entropy)]
    return summarise_attention(hooks, lambda: model(x, mask), spread)


def run(model, x, mask, token_ids):
    model.zero_grad()
    features = model.forward_features(x, mask)
    logits = model.lm_head(features[:, 1:][mask])
    loss = nn.CrossEntropyLoss()(logits, token_ids[mask])
    loss.backward()
    assert torch.allclose(model(x, mask), logits)
    io = {"pixel_values": x, "bool_masked_pos": mask.to(torch.int64), "token_ids": token_ids.to(torch.int64),
          "features": features.detach(), "logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        io[f"grad.{name}"] = p.grad.detach().clone()
    return {k: v.contiguous() for k, v in io.items()}


def verify(cfg, paths):
    """Reload both files into a fresh model and recompute: the fixtures must reproduce themselves."""
    weights, io = load_file(paths[0]), load_file(paths[1])
    model = BeitForMaskedImageModeling(**cfg).float().eval()
    grid = cfg["img_size"] // cfg["patch_size"]
    index = gen_relative_position_index((grid, grid))
    for k in [k for k in weights if k.endswith("relative_position_index")]:
        assert torch.equal(weights.pop(k), index), k
    model.load_state_dict(weights, strict=True)
    again = run(model, io["pixel_values"], io["bool_masked_pos"].bool(), io["token_ids"])
    for k, v in io.items():
        assert torch.allclose(again[k].double(), v.double(), atol=1e-6), k
    print(f"  {len(weights)} weights, {len(io)} io tensors, masked per image {io['bool_masked_pos'].sum(1).tolist()}, "
          f"loss {io['loss'].item():.8f}; " + ", ".join(f"{p.name} {p.stat().st_size} B" for p in paths))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}  timm {timm.__version__}")
    spread = {}
    for variant, cfg in VARIANTS.items():
        model, x, mask, token_ids = build(cfg)
        print(f"{variant} attention spread:")
        spread[variant] = attention_spread(model, x, mask)
        io = run(model, x, mask, token_ids)
        paths = [OUT / f"beit_tiny_{variant}_weights.safetensors", OUT / f"beit_tiny_{variant}_io.safetensors"]
        save_file(official_state_dict(model, (cfg["img_size"] // cfg["patch_size"],) * 2), paths[0])
        save_file(io, paths[1])
        print(variant)
        verify(cfg, paths)
    meta = dict(models=VARIANTS, batch=BATCH, seed=SEED, qk_gain=QK_GAIN, attention_spread=spread,
                torch=torch.__version__, timm=timm.__version__,
                numpy=np.__version__, tensors=DESCRIPTIONS)
    (OUT / "beit_tiny_config.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
