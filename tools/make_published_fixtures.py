#!/usr/bin/env python3
"""Tiny models saved exactly the way each published checkpoint format is saved (issue 21).

Purpose: mim loads checkpoints that other code bases wrote: facebookresearch/mae `.pth` files (the
visualisation model with its decoder, the encoder-only pre-trained weights, a training checkpoint, a
fine-tuned classifier), Hugging Face `save_pretrained` folders (ViTMAE, BEiT), timm hub safetensors
(ViT `.mae`, Swin), microsoft/unilm BEiT `.pth` files, microsoft/SimMIM training checkpoints (with a
pickled yacs config) and microsoft/Swin-Transformer classifiers (official stage layout). For each format
this script builds a TINY model of the same architecture with the official code (or, where noted, the
library the format comes from), moves every weight away from its initialisation, scales the query and
key projections up so the attention is far from uniform, saves it with the very call the repository
uses, and records reference inputs and outputs. The Rust tests load the files through mim's readers and
compare against the references.

Fixtures (tests/fixtures/published/<name>.*; details in manifest.json):
    mae_official_visualize.pth         mae models_mae MaskedAutoencoderViT, {'model': sd} (encoder + decoder)
    mae_official_train_checkpoint.pth  the same class after 2 training steps, util/misc.py save_model's dict
                                       (model, optimizer, epoch, scaler, argparse.Namespace args)
    mae_official_pretrain.pth          that checkpoint's encoder only, {'model': sd} (mae_pretrain_vit_*.pth)
    mae_timm.safetensors               the same encoder as timm's vit_base_patch16_224.mae hub file
    mae_official_finetuned.pth         models_vit VisionTransformer(global_pool=True), {'model': sd}
    mae_hf/, mae_hf_bin/               ViTMAEForPreTraining.save_pretrained, and the 4.x pytorch_model.bin form
    beit_official_pretrain.pth         unilm VisionTransformerForMaskedImageModeling (shared rel. pos. bias)
    beit_hf/                           BeitForMaskedImageModeling.save_pretrained
    beit_official_finetuned.pth        unilm modeling_finetune VisionTransformer (per-block bias, mean pooling)
    simmim_swin.pth                    SimMIM(SwinTransformerForSimMIM), utils.save_checkpoint's dict (yacs config)
    swin_official_finetuned.pth        Swin-Transformer SwinTransformer classifier, {'model': sd}
    swin_timm.safetensors              the same weights in timm >= 0.9 layout (checkpoint_filter_fn), hub form
    swin_hf/, simmim_hf/               SwinForImageClassification / SwinForMaskedImageModeling.save_pretrained
    hf_config_variants.json            ViTMAE config.json edge cases and what ViTMAEConfig resolves them to

Run (venv setup in tools/README.md; about 30 seconds, mostly the cross-check's imports; needs yacs for the SimMIM config):
    ~/.mim-peer-venv/bin/pip install yacs
    ~/.mim-peer-venv/bin/python tools/make_published_fixtures.py

Writes tests/fixtures/published/ (2.9 MB): the checkpoint files, one `<fixture>_io.safetensors`
of reference tensors per fixture, `hf_config_variants.json` and `manifest.json` (per fixture: the file,
the repository and commit or library version it mimics, the exact save call, key layout, every
architecture hyper-parameter, the input normalisation, and a description of each reference tensor).
Then it reloads every file through the loading path its repository uses (torch.load + load_state_dict
strict=True, `from_pretrained`, `timm.create_model(pretrained=True, pretrained_cfg_overlay=dict(file=))`)
and checks that the references reproduce to 1e-6, printing a table. When the official repositories are
mirrored on this machine (`--official DIR`, default /work/.mirror), it also imports their unmodified
code (MAE with the two edits timm 1.0 / numpy 2 need) in a subprocess, loads each file with strict=True,
compares the key order with the official `state_dict()` and recomputes the references.

The output is deterministic: with the versions recorded in manifest.json a rerun reproduces every file
byte for byte (the script reports whether each sha256 matches the previous manifest; manifest.json's
`official_cross_check` records this run's cross-check, so it reads "skipped" where the mirrors are absent).
torch.save names the archive's records after the file name, so files are written in place, never renamed.

Official code comes from tools/official_code.py (copied, patches listed there), the BEiT MIM model from
tools/make_beit_fixtures.py, MAE's `models_vit` classifier and the optimizer-group / mask-generator
functions from tools/make_trajectory_fixtures.py.
"""
import argparse
import collections
import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import partial

import numpy as np
import safetensors
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import make_beit_fixtures as beit_fx  # noqa: E402
import make_mae_fixtures as mae_fx  # noqa: E402
import make_trajectory_fixtures as traj  # noqa: E402
import official_code as oc  # noqa: E402

OUT = TOOLS.parent / "tests" / "fixtures" / "published"
TOL = 1e-6
BATCH = 2
IMAGENET_DEFAULT = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
IMAGENET_INCEPTION = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
MAE_REPO = dict(repository="facebookresearch/mae", commit=oc.MAE_COMMIT)
UNILM_REPO = dict(repository="microsoft/unilm (beit/)", commit=oc.UNILM_COMMIT)
SIMMIM_REPO = dict(repository="microsoft/SimMIM", commit=oc.SIMMIM_COMMIT)
SWIN_REPO = dict(repository="microsoft/Swin-Transformer", commit=oc.SWIN_COMMIT)

# Tiny architectures. MAE: official MaskedAutoencoderViT / models_vit arguments.
MAE_CFG = dict(img_size=24, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=4,
               decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, mlp_ratio=4.0)
MAE_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) in every models_mae / models_vit constructor
MAE_FT_CFG = dict(img_size=24, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4,
                  mlp_ratio=4.0, qkv_bias=True, layer_norm_eps=MAE_EPS, global_pool=True)
HF_MAE_CFG = dict(image_size=24, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=128, decoder_hidden_size=16, decoder_num_hidden_layers=2,
                  decoder_num_attention_heads=2, decoder_intermediate_size=64, mask_ratio=0.75, norm_pix_loss=False,
                  hidden_act="gelu", qkv_bias=True, layer_norm_eps=1e-12)  # 1e-12: HF's default, as in facebook/vit-mae-*
BEIT_CFG = dict(img_size=16, patch_size=4, in_chans=3, vocab_size=32, embed_dim=32, depth=2, num_heads=2,
                mlp_ratio=4.0, init_std=0.02, layer_scale_init_value=0.1, use_abs_pos_emb=False,
                use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
BEIT_FT_CFG = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2,
                   mlp_ratio=4.0, qkv_bias=True, init_values=0.1, use_abs_pos_emb=False, use_rel_pos_bias=True,
                   use_shared_rel_pos_bias=False, use_mean_pooling=True, layer_norm_eps=1e-6)
HF_BEIT_CFG = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=128, vocab_size=32, use_mask_token=True,
                   use_absolute_position_embeddings=False, use_relative_position_bias=False,
                   use_shared_relative_position_bias=True, layer_scale_init_value=0.1, hidden_act="gelu",
                   layer_norm_eps=1e-12)  # 1e-12: HF's default, as in microsoft/beit-*
SWIN_CFG = dict(img_size=32, patch_size=2, in_chans=3, embed_dim=6, depths=[2, 2, 2], num_heads=[2, 2, 4],
                window_size=4, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, drop_path_rate=0.0,
                ape=False, patch_norm=True)
SWIN_CLASSES = 5
SIMMIM_STRIDE = SWIN_CFG["patch_size"] * 2 ** (len(SWIN_CFG["depths"]) - 1)  # 8; build_simmim hard-codes 32 (= 4 * 2**3)
SIMMIM_MASK = dict(mask_patch_size=8, mask_ratio=0.6)

# Perturbation (added to the official initialisation): weights and biases 0.05 * N(0,1); LayerNorm
# weights 0.2, LayerNorm biases 0.1; layer scale 0.05 (around 0.1); cls / mask tokens 0.5; relative
# position tables 0.5; learned position embeddings 0.1. The fixed sin-cos position embeddings of the MAE
# pre-training models are left exactly as the official code computes them (training never changes them).
SCALE = dict(weight=0.05, bias=0.05, norm_weight=0.2, norm_bias=0.1, layer_scale=0.05, token=0.5,
             rel_table=0.5, pos_embed=0.1)
# Gains on the query and key projections (value untouched) so the attention is far from uniform: the
# fraction entropy / log(tokens) of every attention layer is printed, recorded, and must stay below 0.9.
QK_GAIN = dict(mae_enc=2.0, mae_dec=2.5, vit=5.0, hf_mae_enc=5.0, hf_mae_dec=8.0, beit=5.0, hf_beit=5.0,
               swin=(10.0, 8.0, 6.0))
SEEDS = dict(mae_visualize=1, mae_pretrain=2, mae_finetuned=3, mae_hf=4, beit_pretrain=5, beit_hf=6,
             beit_finetuned=7, simmim=8, swin=9, swin_hf=10, simmim_hf=11)


# ======================================================================================================
# Helpers
# ======================================================================================================

def perturb(model, skip=()):
    """Adds SCALE-sized normal noise to every parameter (see SCALE), in named_parameters order."""
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name in skip:
                continue
            if name in norms:
                s = SCALE["norm_weight"] if leaf == "weight" else SCALE["norm_bias"]
            elif leaf in ("gamma_1", "gamma_2", "lambda_1", "lambda_2"):
                s = SCALE["layer_scale"]
            elif leaf in ("cls_token", "mask_token"):
                s = SCALE["token"]
            elif leaf == "relative_position_bias_table":
                s = SCALE["rel_table"]
            elif leaf in ("pos_embed", "position_embeddings", "absolute_pos_embed"):
                s = SCALE["pos_embed"]
            else:
                s = SCALE["bias"] if p.dim() == 1 else SCALE["weight"]
            p.add_(s * torch.randn_like(p))


def scale_fused_qk(attn, gain):
    """q and k rows of a fused qkv weight [3C, C] (value rows untouched)."""
    with torch.no_grad():
        d = attn.qkv.weight.shape[0] // 3
        attn.qkv.weight[: 2 * d].mul_(gain)


def scale_hf_qk(model, gains):
    """q_proj / k_proj weights of a transformers 5.x model; gains: {name prefix: gain}."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(next(g for prefix, g in gains.items() if name.startswith(prefix)))


@contextlib.contextmanager
def capture_softmax(records):
    """Records (logits, probabilities) of every softmax over the last dim (torch.Tensor.softmax,
    F.softmax, nn.Softmax): the attention of every model here, whatever its implementation."""
    orig_t, orig_f = torch.Tensor.softmax, F.softmax
    depth = [0]  # F.softmax calls Tensor.softmax: record the outermost call only

    def wrap(fn):
        def wrapped(x, *args, **kwargs):
            depth[0] += 1
            try:
                out = fn(x, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                records.append((x.detach(), out.detach()))
            return out
        return wrapped

    t_softmax, f_softmax = wrap(orig_t), wrap(orig_f)

    torch.Tensor.softmax, F.softmax = t_softmax, f_softmax
    try:
        yield
    finally:
        torch.Tensor.softmax, F.softmax = orig_t, orig_f


def attention_spread(label, call):
    """Per attention softmax of `call()`: the mean row entropy as a fraction of log(keys) (1 = uniform)
    and the row std of the logits over the keys not masked out (bias and shift masks included).
    Refuses fixtures whose attention is near uniform (fraction >= 0.9) anywhere."""
    records = []
    with torch.no_grad(), capture_softmax(records):
        call()
    out = []
    for logits, p in records:
        n = p.shape[-1]
        entropy = (-(p * p.clamp_min(1e-30).log()).sum(-1).mean() / math.log(n)).item()
        valid = logits > -50  # Swin's shifted-window mask adds -100
        lv = torch.where(valid, logits, torch.nan)
        std = torch.sqrt(torch.nanmean((lv - torch.nanmean(lv, -1, keepdim=True)) ** 2, -1)).nanmean().item()
        out.append(dict(keys=n, entropy_fraction=round(entropy, 3), logit_row_std=round(std, 3)))
    assert out, f"{label}: no attention softmax seen"
    worst = max(o["entropy_fraction"] for o in out)
    assert worst < 0.9, f"{label}: attention too uniform: {out}"
    print(f"  {label}: {len(out)} attention layers, entropy/log(keys) "
          f"{min(o['entropy_fraction'] for o in out):.2f}-{worst:.2f}, logit row std "
          f"{min(o['logit_row_std'] for o in out):.2f}-{max(o['logit_row_std'] for o in out):.2f}")
    return out


def images(seed, size, channels=3):
    """Fixed inputs, N(0,1) (normalised-pixel scale)."""
    return torch.randn(BATCH, channels, size, size, generator=torch.Generator().manual_seed(1000 + seed))


def contiguous(d):
    return {k: v.detach().contiguous() for k, v in d.items()}


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def describe_state_dict(sd):
    """'name [shape] dtype' per entry, in the file's order."""
    return [f"{k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in sd.items()]


def pickle_globals(path):
    """The pickle protocol and the GLOBAL references in a torch.save zip archive's data.pkl: what a
    reader other than Python's unpickler has to resolve."""
    import pickletools
    import zipfile
    with zipfile.ZipFile(path) as z:
        records = z.namelist()
        data = z.read(next(n for n in records if n.endswith("/data.pkl")))
    proto, names = None, set()
    for op, arg, _ in pickletools.genops(data):
        if op.name == "PROTO":
            proto = arg
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add("<STACK_GLOBAL>")
    prefix = records[0].split("/")[0]
    return dict(protocol=proto, globals=sorted(names),
                records=f"{len(records)} zip records under '{prefix}/' (the file stem): data.pkl, data/<n>, version, "
                        f"byteorder, .format_version, .storage_alignment, .data/serialization_id")


def sincos(dim, grid):
    """facebookresearch/mae get_2d_sincos_pos_embed as [1, 1 + grid^2, dim] float32."""
    return torch.from_numpy(oc.get_2d_sincos_pos_embed(dim, grid, cls_token=True)).float().unsqueeze(0)


def unilm_state_dict(model):
    """A timm-BEiT-built model's state dict as unilm's modules write it: unilm registers every
    `relative_position_index` as a persistent buffer, which state_dict() lists right after the module's
    own `relative_position_bias_table` parameter (timm keeps the index non-persistent)."""
    sd = collections.OrderedDict()
    for k, v in model.state_dict().items():
        sd[k] = v
        if k.endswith("relative_position_bias_table"):
            mod = model.get_submodule(k.rsplit(".", 1)[0])
            sd[k.replace("relative_position_bias_table", "relative_position_index")] = mod.relative_position_index.clone()
    return sd


FIXTURES = []  # manifest entries, in order
CHECKS = []    # (fixture name, io file, reload-and-recompute function)


def save_io(name, io):
    path = OUT / f"{name}_io.safetensors"
    save_file(contiguous(io), path)
    return path.name


def add_fixture(entry, check):
    """Records a manifest entry; its `tensors` descriptions get each io tensor's actual shape and dtype."""
    io = load_file(OUT / entry["io"])
    desc = entry["tensors"]
    assert set(desc) == set(io), (entry["name"], set(desc) ^ set(io))
    entry["tensors"] = {k: dict(shape=list(io[k].shape), dtype=str(io[k].dtype).removeprefix("torch."),
                                description=re.sub(r"^\[[^\]]*\]\s*", "", desc[k])) for k in io}
    FIXTURES.append(entry)
    CHECKS.append((entry["name"], entry["io"], check))


# ======================================================================================================
# 1. facebookresearch/mae: visualisation model (encoder + decoder), {'model': state_dict}
# ======================================================================================================

def build_mae(norm_pix_loss, seed, qk=True):
    torch.manual_seed(seed)
    model = oc.MaskedAutoencoderViT(**MAE_CFG, norm_layer=partial(nn.LayerNorm, eps=MAE_EPS), norm_pix_loss=norm_pix_loss)
    perturb(model, skip={"pos_embed", "decoder_pos_embed"})
    if qk:
        for blk in model.blocks:
            scale_fused_qk(blk.attn, QK_GAIN["mae_enc"])
        for blk in model.decoder_blocks:
            scale_fused_qk(blk.attn, QK_GAIN["mae_dec"])
    return model.eval()


def mae_config(norm_pix_loss):
    return dict(MAE_CFG, layer_norm_eps=MAE_EPS, qkv_bias=True, norm_pix_loss=norm_pix_loss, mask_ratio=0.75,
                act="GELU (exact erf)", num_patches=(MAE_CFG["img_size"] // MAE_CFG["patch_size"]) ** 2,
                pos_embed="fixed 2-D sin-cos (get_2d_sincos_pos_embed, cls row zeros), stored in the file",
                decoder_pos_embed="fixed 2-D sin-cos, stored in the file")


MAE_NOISE_SEED = 123  # noise = torch.rand(B, L) right after torch.manual_seed(MAE_NOISE_SEED)


def mae_noise(L):
    torch.manual_seed(MAE_NOISE_SEED)
    return torch.rand(BATCH, L)


def mae_masked_io(model, x, noise):
    with torch.no_grad():
        loss, pred, mask = model(x, mask_ratio=0.75, noise=noise)
        latent, mask2, ids_restore = model.forward_encoder(x, 0.75, noise)
        assert torch.equal(mask, mask2)
    len_keep = int(noise.shape[1] * (1 - 0.75))
    return dict(loss=loss.reshape(1), pred=pred, mask=mask, ids_restore=ids_restore.to(torch.int64),
                ids_keep=torch.argsort(noise, dim=1)[:, :len_keep].to(torch.int64), latent=latent,
                target=model.patchify(x))


def mae_all_tokens_latent(model, x):
    """forward_encoder with mask_ratio 0 and ascending noise (argsort = identity): every patch, in order."""
    L = model.patch_embed.num_patches
    noise = torch.arange(L, dtype=torch.float32).div(L).expand(x.shape[0], L)
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(x, 0.0, noise)
        assert mask.sum() == 0 and torch.equal(ids_restore, torch.arange(L).expand_as(ids_restore))
        # the same without masking code: patch embed + pos, cls + pos[0] first, blocks, norm
        h = model.patch_embed(x) + model.pos_embed[:, 1:]
        h = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(x.shape[0], -1, -1), h], 1)
        for blk in model.blocks:
            h = blk(h)
        assert torch.equal(model.norm(h), latent)
    return latent


MAE_MASKED_DESC = {
    "pixel_values": "[2,3,32,32] input, randn (already normalised: mean/std applied)",
    "noise": "masking noise = torch.rand(2, 36) right after torch.manual_seed(123); the official "
             "random_masking draws exactly this (torch.rand(N, L)) when seeded so, or pass it as noise",
    "loss": "[1] model(pixel_values, mask_ratio=0.75): mean over removed patches of the per-patch MSE",
    "pred": "[2,64,48] decoder predictions (cls removed), patch order row-major, (p, q, c) within a patch",
    "mask": "float, 1 = removed, 0 = kept; len_keep = int(36 * (1 - 0.75)) = 9",
    "ids_restore": "[2,64] int64 argsort(argsort(noise))",
    "ids_keep": "int64 argsort(noise)[:, :9]: the kept patches, in the order the encoder sees them",
    "latent": "[2,17,32] forward_encoder output (after the final norm): cls first, then the kept patches in ids_keep order",
    "target": "[2,64,48] patchify(pixel_values), the raw-pixel target (p, q, c order)",
}


def fixture_mae_visualize():
    name = "mae_official_visualize"
    model = build_mae(norm_pix_loss=False, seed=SEEDS["mae_visualize"])
    x, L = images(SEEDS["mae_visualize"], 24), model.patch_embed.num_patches
    noise = mae_noise(L)
    spread = attention_spread(name, lambda: model(x, 0.75, noise))
    io = dict(pixel_values=x, noise=noise, **mae_masked_io(model, x, noise))
    # the official draw: with noise=None, random_masking calls torch.rand(N, L) after the same seed
    torch.manual_seed(MAE_NOISE_SEED)
    with torch.no_grad():
        loss2, pred2, _ = model(x, mask_ratio=0.75)
    assert torch.equal(loss2.reshape(1), io["loss"]) and torch.equal(pred2, io["pred"])
    path = OUT / f"{name}.pth"
    torch.save({'model': model.state_dict()}, path)

    def check():
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        m = oc.MaskedAutoencoderViT(**MAE_CFG, norm_layer=partial(nn.LayerNorm, eps=MAE_EPS), norm_pix_loss=False).eval()
        m.load_state_dict(ckpt['model'], strict=True)  # the demo uses strict=False; strict proves the key set
        return dict(pixel_values=x, noise=noise, **mae_masked_io(m, x, noise))

    add_fixture(dict(
        name=name, file=path.name, family="mae", kind="pretrain-with-decoder", **MAE_REPO,
        mimics="mae_visualize_vit_large.pth (demo/mae_visualize.ipynb: prepare_model loads checkpoint['model'])",
        save_call="torch.save({'model': model.state_dict()}, path)",
        load_call="MaskedAutoencoderViT(...).load_state_dict(torch.load(path, map_location='cpu')['model'])",
        torch_load_weights_only_ok=True,
        layout="dict with one key 'model': the full MaskedAutoencoderViT state dict, encoder (cls_token, pos_embed, "
               "patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm) and decoder "
               "(mask_token, decoder_pos_embed, decoder_embed, decoder_blocks.N.*, decoder_norm, decoder_pred)",
        keys=describe_state_dict(model.state_dict()),
        config=mae_config(norm_pix_loss=False), normalisation=IMAGENET_DEFAULT,
        io=save_io(name, io), tensors=MAE_MASKED_DESC, attention=spread), check)
    return model


# ======================================================================================================
# 2. facebookresearch/mae: a training checkpoint (misc.save_model) and the encoder-only pretrain file
# ======================================================================================================

MAE_PRETRAIN_ARGV = ["--batch_size", "2", "--epochs", "1", "--model", "mae_vit_tiny_patch4_dec24d2b",
                     "--input_size", "24", "--mask_ratio", "0.75", "--norm_pix_loss", "--blr", "1.5e-4",
                     "--weight_decay", "0.05", "--warmup_epochs", "0", "--data_path", "/path/to/imagenet",
                     "--output_dir", "./output_dir", "--log_dir", "./output_dir", "--device", "cpu",
                     "--num_workers", "0"]
MAE_TRAIN_ITERS = 2


def train_mae(model, seed):
    """main_pretrain.py main() + engine_pretrain.py train_one_epoch for one epoch of MAE_TRAIN_ITERS
    iterations on fixed random batches (CPU, no autocast, one process)."""
    args = oc.mae_pretrain_args_parser().parse_args(MAE_PRETRAIN_ARGV)
    args.distributed = False  # misc.init_distributed_mode, the non-distributed branch
    eff_batch_size = args.batch_size * args.accum_iter * 1
    if args.lr is None:  # only base_lr is specified
        args.lr = args.blr * eff_batch_size / 256
    param_groups = traj.add_weight_decay(model, args.weight_decay)
    optimizer = torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95))
    loss_scaler = oc.NativeScalerWithGradNormCount()
    g = torch.Generator().manual_seed(2000 + seed)
    data = torch.randn(MAE_TRAIN_ITERS, args.batch_size, 3, args.input_size, args.input_size, generator=g)
    torch.manual_seed(3000 + seed)  # the masking noise of each step: random_masking's own torch.rand
    model.train(True)
    optimizer.zero_grad()
    record = dict(loss=[], lr=[], grad_norm=[])
    epoch, accum_iter = 0, args.accum_iter
    for data_iter_step, samples in enumerate(data):
        if data_iter_step % accum_iter == 0:
            lr = traj.adjust_learning_rate(optimizer, data_iter_step / len(data) + epoch, args)
        loss, _, _ = model(samples, mask_ratio=args.mask_ratio)
        record["loss"].append(loss.item())
        loss /= accum_iter
        norm = loss_scaler(loss, optimizer, parameters=model.parameters(), update_grad=(data_iter_step + 1) % accum_iter == 0)
        record["lr"].append(lr)
        record["grad_norm"].append(norm.item())
        if (data_iter_step + 1) % accum_iter == 0:
            optimizer.zero_grad()
    model.eval()
    return args, optimizer, loss_scaler, epoch, record


def is_mae_encoder_key(k):
    return k in ("cls_token", "pos_embed") or k.startswith(("patch_embed.", "blocks.", "norm."))


MAE_LATENT_DESC = {
    "pixel_values": "[2,3,32,32] input, randn (normalised)",
    "latent_all_tokens": "[2,65,32] encoder output over ALL patches in order (cls first, then patches row-major), after "
                         "the final norm: forward_encoder(pixel_values, mask_ratio=0.0, noise=arange(36)/36) (ascending "
                         "noise, so ids_shuffle is the identity; checked equal to patch_embed + pos_embed[1:], cls_token + "
                         "pos_embed[0] prepended, blocks, norm). Official code without a noise argument would shuffle the "
                         "tokens (random_masking argsorts torch.rand noise even at ratio 0).",
}


def fixture_mae_pretrain():
    seed = SEEDS["mae_pretrain"]
    model = build_mae(norm_pix_loss=True, seed=seed)
    args, optimizer, loss_scaler, epoch, record = train_mae(model, seed)
    x, L = images(seed, 24), model.patch_embed.num_patches
    noise = mae_noise(L)
    spread = attention_spread("mae_official_train_checkpoint", lambda: model(x, 0.75, noise))
    sd = model.state_dict()

    # --- the training checkpoint, util/misc.py save_model (loss_scaler given: the torch.save branch) ---
    name = "mae_official_train_checkpoint"
    path = OUT / f"{name}.pth"
    to_save = {
        'model': sd,
        'optimizer': optimizer.state_dict(),
        'epoch': epoch,
        'scaler': loss_scaler.state_dict(),
        'args': args,
    }
    torch.save(to_save, path)  # misc.save_on_master
    io = dict(pixel_values=x, noise=noise, **mae_masked_io(model, x, noise), latent_all_tokens=mae_all_tokens_latent(model, x))
    del io["target"]

    def check_train():
        ckpt = torch.load(path, map_location='cpu', weights_only=False)  # argparse.Namespace inside
        assert set(ckpt) == {'model', 'optimizer', 'epoch', 'scaler', 'args'} and ckpt['epoch'] == epoch
        assert vars(ckpt['args']) == vars(args)
        m = oc.MaskedAutoencoderViT(**MAE_CFG, norm_layer=partial(nn.LayerNorm, eps=MAE_EPS), norm_pix_loss=True).eval()
        m.load_state_dict(ckpt['model'], strict=True)  # misc.load_model: model_without_ddp.load_state_dict(checkpoint['model'])
        opt = torch.optim.AdamW(traj.add_weight_decay(m, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
        opt.load_state_dict(ckpt['optimizer'])
        scaler = oc.NativeScalerWithGradNormCount()
        scaler.load_state_dict(ckpt['scaler'])
        again = dict(pixel_values=x, noise=noise, **mae_masked_io(m, x, noise), latent_all_tokens=mae_all_tokens_latent(m, x))
        del again["target"]
        return again

    opt_sd = optimizer.state_dict()
    add_fixture(dict(
        name=name, file=path.name, family="mae", kind="pretrain-with-decoder (training checkpoint)", **MAE_REPO,
        mimics="checkpoint-<epoch>.pth written by main_pretrain.py through util/misc.py save_model",
        save_call="misc.save_on_master({'model': model_without_ddp.state_dict(), 'optimizer': optimizer.state_dict(), "
                  "'epoch': epoch, 'scaler': loss_scaler.state_dict(), 'args': args}, output_dir / 'checkpoint-0.pth') "
                  "(= torch.save)",
        load_call="torch.load(path, map_location='cpu') (weights_only=False: 'args' is an argparse.Namespace); "
                  "model.load_state_dict(checkpoint['model'])",
        torch_load_weights_only_ok=False,
        layout="dict: 'model' (full MaskedAutoencoderViT state dict, as mae_official_visualize), 'optimizer' (AdamW "
               "state_dict: 'state' {param index: {'step': float32 scalar tensor, 'exp_avg', 'exp_avg_sq'}}, "
               "'param_groups' [no_decay (weight_decay 0), decay (0.05)] with integer 'params'; the two frozen pos "
               "embeds are in no group), 'epoch' int, 'scaler' (GradScaler state_dict: scale, growth_factor, "
               "backoff_factor, growth_interval, _growth_tracker), 'args' (argparse.Namespace, pickled as a "
               "GLOBAL argparse.Namespace object)",
        keys=describe_state_dict(sd),
        optimizer_param_groups=[{k: (v if k != 'params' else f"{len(v)} indices") for k, v in grp.items()} for grp in opt_sd['param_groups']],
        scaler=loss_scaler.state_dict(), epoch=epoch, args=vars(args), training_record=record,
        training="main_pretrain.py recipe for 1 epoch of 2 iterations on fixed randn batches: lr = blr * 2 / 256, "
                 "AdamW(add_weight_decay(model, 0.05), betas=(0.9, 0.95)), per-iteration cosine adjust_learning_rate "
                 "(warmup 0), NativeScalerWithGradNormCount (torch.amp.GradScaler('cpu'), same state_dict layout as CUDA's), "
                 "float32 without autocast, one process",
        config=mae_config(norm_pix_loss=True), normalisation=IMAGENET_DEFAULT,
        io=save_io(name, io), tensors=dict({k: v for k, v in MAE_MASKED_DESC.items() if k != "target"}, loss=MAE_MASKED_DESC["loss"] + " (norm_pix_loss=True: target "
                                                "normalised per patch by mean and unbiased var + 1e-6)", **MAE_LATENT_DESC),
        attention=spread), check_train)

    # --- the encoder-only published form, mae_pretrain_vit_base.pth ---
    name = "mae_official_pretrain"
    path_enc = OUT / f"{name}.pth"
    enc = collections.OrderedDict((k, v) for k, v in sd.items() if is_mae_encoder_key(k))
    torch.save({'model': enc}, path_enc)
    latent = mae_all_tokens_latent(model, x)
    io_enc = dict(pixel_values=x, latent_all_tokens=latent)

    def check_enc():
        ckpt = torch.load(path_enc, map_location='cpu', weights_only=True)
        assert list(ckpt) == ['model']
        m = oc.MaskedAutoencoderViT(**MAE_CFG, norm_layer=partial(nn.LayerNorm, eps=MAE_EPS), norm_pix_loss=True).eval()
        missing, unexpected = m.load_state_dict(ckpt['model'], strict=False)
        assert not unexpected and set(missing) == {k for k in sd if not is_mae_encoder_key(k)}, (missing, unexpected)
        # main_finetune.py's check: a models_vit classifier misses only head.* and (global_pool) fc_norm.*
        ft = traj.MaeFinetuneViT(**MAE_FT_CFG)
        missing, unexpected = ft.load_state_dict(ckpt['model'], strict=False)
        assert set(missing) == {'head.weight', 'head.bias', 'fc_norm.weight', 'fc_norm.bias'} and set(unexpected) == {'norm.weight', 'norm.bias'}
        return dict(pixel_values=x, latent_all_tokens=mae_all_tokens_latent(m, x))

    add_fixture(dict(
        name=name, file=path_enc.name, family="mae", kind="encoder-only", **MAE_REPO,
        mimics="mae_pretrain_vit_{base,large,huge}.pth (README 'pre-trained checkpoint'; main_finetune.py --finetune "
               "loads checkpoint['model'] and expects only head.* / fc_norm.* missing)",
        save_call="torch.save({'model': {k: v for k, v in model.state_dict().items() if encoder key}}, path): the training "
                  "checkpoint's 'model' without mask_token, decoder_* (encoder keys: cls_token, pos_embed, patch_embed.*, blocks.*, norm.*)",
        load_call="torch.load(path, map_location='cpu')['model'] -> load_state_dict(strict=False) into models_vit / models_mae",
        torch_load_weights_only_ok=True,
        layout="dict with one key 'model': the encoder of MaskedAutoencoderViT only: cls_token [1,1,32], pos_embed [1,37,32] "
               "(fixed sin-cos, cls row 0), patch_embed.proj.{weight,bias}, blocks.N.*, norm.{weight,bias}; no decoder, "
               "no mask_token, no head",
        keys=describe_state_dict(enc), same_weights_as="mae_official_train_checkpoint (its encoder)",
        config=dict(mae_config(norm_pix_loss=True), decoder="not in the file"), normalisation=IMAGENET_DEFAULT,
        io=save_io(name, io_enc), tensors=MAE_LATENT_DESC), check_enc)
    return model, enc, x, latent


# ======================================================================================================
# 3. facebookresearch/mae: fine-tuned models_vit classifier, {'model': state_dict}
# ======================================================================================================

def fixture_mae_finetuned():
    name = "mae_official_finetuned"
    torch.manual_seed(SEEDS["mae_finetuned"])
    model = traj.MaeFinetuneViT(**MAE_FT_CFG)
    with torch.no_grad():
        model.pos_embed.copy_(sincos(MAE_FT_CFG["embed_dim"], 6))  # fine-tuning starts from the sin-cos table
    perturb(model)
    for blk in model.blocks:
        scale_fused_qk(blk.attn, QK_GAIN["vit"])
    model.eval()
    x = images(SEEDS["mae_finetuned"], 24)
    spread = attention_spread(name, lambda: model(x))

    def outputs(m):
        with torch.no_grad():
            h = m.patch_embed(x)
            h = torch.cat((m.cls_token.expand(x.shape[0], -1, -1), h), dim=1) + m.pos_embed
            for blk in m.blocks:
                h = blk(h)
            pooled = m.fc_norm(h[:, 1:, :].mean(dim=1))
            logits = m(x)
            assert torch.equal(m.head(pooled), logits)
        return dict(pixel_values=x, pooled=pooled, logits=logits)

    io = outputs(model)
    path = OUT / f"{name}.pth"
    torch.save({'model': model.state_dict()}, path)

    def check():
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        m = traj.MaeFinetuneViT(**MAE_FT_CFG).eval()
        m.load_state_dict(ckpt['model'], strict=True)  # misc.load_model (main_finetune.py --eval --resume)
        return outputs(m)

    add_fixture(dict(
        name=name, file=path.name, family="mae", kind="classifier", **MAE_REPO,
        mimics="mae_finetuned_vit_{base,large,huge}.pth (FINETUNE.md: main_finetune.py --eval --resume)",
        save_call="torch.save({'model': model_without_ddp.state_dict()}, path) (misc.save_model's 'model' entry; the "
                  "published files carry only it)",
        load_call="misc.load_model: model_without_ddp.load_state_dict(torch.load(path, map_location='cpu')['model'])",
        torch_load_weights_only_ok=True,
        model_code="models_vit.VisionTransformer(global_pool=True) as it runs on timm 0.3.2 (MAE's pinned version): "
                   "make_trajectory_fixtures.MaeFinetuneViT, same names and parameter order (cls_token, pos_embed, "
                   "patch_embed, blocks, head, fc_norm; the final norm deleted)",
        layout="dict with one key 'model': cls_token, pos_embed [1,37,32] (learned; sin-cos + perturbation), "
               "patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*, head.{weight [5,32], bias}, "
               "fc_norm.{weight,bias}; no 'norm.*' (global_pool)",
        keys=describe_state_dict(model.state_dict()),
        config=dict(MAE_FT_CFG, act="GELU (exact erf)", pooling="mean of the patch tokens (cls excluded), then fc_norm, then head"),
        normalisation=IMAGENET_DEFAULT, io=save_io(name, io),
        tensors={"pixel_values": "[2,3,32,32] input, randn (normalised)",
                 "pooled": "[2,32] fc_norm(mean over the 36 patch tokens of the last block's output)",
                 "logits": "[2,5] model(pixel_values) = head(pooled)"},
        attention=spread), check)


# ======================================================================================================
# 4. Hugging Face ViTMAEForPreTraining: save_pretrained (safetensors) and the pytorch_model.bin form
# ======================================================================================================

def hf_mae_outputs(model, x, noise):
    with torch.no_grad():
        out = model(pixel_values=x, noise=noise)
        enc = model.vit(pixel_values=x, noise=noise).last_hidden_state
    return dict(pixel_values=x, noise=noise, loss=out.loss.reshape(1), logits=out.logits, mask=out.mask,
                ids_restore=out.ids_restore.to(torch.int64), encoder_last_hidden_state=enc)


def fixture_mae_hf():
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    from transformers.core_model_loading import revert_weight_conversion
    seed = SEEDS["mae_hf"]
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(ViTMAEConfig(**HF_MAE_CFG)).eval()
    grid = HF_MAE_CFG["image_size"] // HF_MAE_CFG["patch_size"]
    with torch.no_grad():
        # transformers 5.x leaves both fixed position embeddings at zero in a model built from a config;
        # published checkpoints store the sin-cos tables, so set them as HF's initialize_weights computes them
        model.vit.embeddings.position_embeddings.copy_(mae_fx.sincos(HF_MAE_CFG["hidden_size"], grid))
        model.decoder.decoder_pos_embed.copy_(mae_fx.sincos(HF_MAE_CFG["decoder_hidden_size"], grid))
        for name, dim in [("vit.embeddings.position_embeddings", HF_MAE_CFG["hidden_size"]),
                          ("decoder.decoder_pos_embed", HF_MAE_CFG["decoder_hidden_size"])]:
            assert torch.allclose(model.state_dict()[name], sincos(dim, grid), atol=1e-6), name
    perturb(model, skip={"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"})
    scale_hf_qk(model, {"vit.": QK_GAIN["hf_mae_enc"], "decoder.": QK_GAIN["hf_mae_dec"]})
    x = images(seed, 24)
    noise = torch.rand(BATCH, grid * grid, generator=torch.Generator().manual_seed(4000 + seed))
    # the spread is measured on an eager copy (the decoder keeps its own config copy, so switch before building)
    eager = ViTMAEForPreTraining(ViTMAEConfig(**HF_MAE_CFG, attn_implementation="eager")).eval()
    eager.load_state_dict(model.state_dict(), strict=True)
    spread = attention_spread("mae_hf", lambda: eager(pixel_values=x, noise=noise))
    io = hf_mae_outputs(model, x, noise)

    d = OUT / "mae_hf"
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    d_bin = OUT / "mae_hf_bin"
    shutil.rmtree(d_bin, ignore_errors=True)
    d_bin.mkdir()
    model.config.save_pretrained(d_bin)
    legacy = revert_weight_conversion(model, dict(model.state_dict()))
    torch.save({k: v.contiguous() for k, v in legacy.items()}, d_bin / "pytorch_model.bin")
    io_name = save_io("mae_hf", io)
    saved_keys = describe_state_dict(load_file(d / "model.safetensors"))

    def check(folder):
        def run():
            m, info = ViTMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
            assert not any(info.values()), info  # no missing / unexpected / mismatched keys
            return hf_mae_outputs(m.eval(), x, noise)
        return run

    common = dict(
        family="mae", kind="pretrain-with-decoder", repository="huggingface/transformers (ViTMAEForPreTraining)",
        version=transformers.__version__, config=dict(HF_MAE_CFG, config_json="the folder's config.json (5.24 writes "
        "'dtype' and 'transformers_version'; 4.x hub files say 'torch_dtype')"),
        normalisation=IMAGENET_DEFAULT | {"note": "ViTImageProcessor of facebook/vit-mae-*"},
        io=io_name, keys=saved_keys,
        key_names="transformers 4.x names, which save_pretrained writes even in 5.x (save_original_format=True "
                  "reverts the 5.x renaming): vit.encoder.layer.N.attention.attention.{query,key,value}, "
                  "attention.output.dense, intermediate.dense, output.dense, layernorm_{before,after}; "
                  "decoder.decoder_layers.N.* likewise; in memory 5.x calls them vit.layers.N.attention.q_proj etc.",
        position_embeddings="vit.embeddings.position_embeddings [1,37,32] and decoder.decoder_pos_embed [1,37,16] hold "
                            "the official 2-D sin-cos tables (set before saving: 5.x from_config leaves them zero), "
                            "equal to facebookresearch/mae get_2d_sincos_pos_embed to 1e-6; not perturbed",
        tensors={"pixel_values": "[2,3,32,32] input, randn (normalised)",
                 "noise": "[2,64] rand, passed as noise= (HF argsorts it exactly as the official random_masking)",
                 "loss": "[1] out.loss (norm_pix_loss=False): masked mean of per-patch MSE",
                 "logits": "[2,64,48] out.logits, decoder predictions, cls removed",
                 "mask": "out.mask, 1 = removed; len_keep = int(36 * 0.25) = 9",
                 "ids_restore": "[2,64] int64 out.ids_restore",
                 "encoder_last_hidden_state": "[2,17,32] model.vit(pixel_values, noise=noise).last_hidden_state: after the "
                                              "final layernorm (eps 1e-12), cls first, kept patches in argsort(noise) order"},
        attention=spread)
    add_fixture(dict(
        name="mae_hf", file="mae_hf/", files=["mae_hf/config.json", "mae_hf/model.safetensors"], **common,
        mimics="facebook/vit-mae-base (and -large / -huge) hub folders: config.json + model.safetensors",
        save_call="ViTMAEForPreTraining.save_pretrained('mae_hf') (transformers 5.24: always safetensors)",
        load_call="ViTMAEForPreTraining.from_pretrained('mae_hf')"), check(d))
    add_fixture(dict(
        name="mae_hf_bin", file="mae_hf_bin/", files=["mae_hf_bin/config.json", "mae_hf_bin/pytorch_model.bin"],
        **dict(common, keys="identical to mae_hf (names, shapes, values)"), same_weights_as="mae_hf",
        mimics="facebook/vit-mae-* pytorch_model.bin (transformers 4.x save_pretrained(safe_serialization=False))",
        save_call="transformers 5.24 has no safe_serialization option (save_pretrained always writes safetensors; the "
                  "keyword is swallowed by **kwargs), so this reproduces what 4.x wrote: config.save_pretrained(folder); "
                  "torch.save({name: tensor.contiguous()} with the 4.x names (revert_weight_conversion), "
                  "folder / 'pytorch_model.bin')",
        load_call="ViTMAEForPreTraining.from_pretrained('mae_hf_bin') (falls back to pytorch_model.bin)",
        torch_load_weights_only_ok=True), check(d_bin))


# ======================================================================================================
# 5. timm vit_base_patch16_224.mae: hub model.safetensors
# ======================================================================================================

TIMM_MAE_KW = dict(img_size=24, patch_size=4, embed_dim=32, depth=2, num_heads=4)


def fixture_mae_timm(enc, x, official_latent):
    name = "mae_timm"
    model = timm.create_model("vit_base_patch16_224.mae", pretrained=False, **TIMM_MAE_KW).eval()
    assert model.num_classes == 0, "pretrained_cfg num_classes=0 must apply"
    model.load_state_dict(enc, strict=True)  # timm's hub copy is the official encoder, unchanged
    path = OUT / f"{name}.safetensors"
    save_file(model.state_dict(), path)  # timm _hub.py save_for_hf: safetensors.torch.save_file(model.state_dict(), ...)

    def outputs(m):
        with torch.no_grad():
            return dict(pixel_values=x, features=m.forward_features(x), pooled=m(x))

    io = outputs(model)
    diff = (io["features"] - official_latent).abs().max().item()
    assert diff < 1e-5, diff

    def check():
        m = timm.create_model("vit_base_patch16_224.mae", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **TIMM_MAE_KW).eval()
        return outputs(m)

    add_fixture(dict(
        name=name, file=path.name, family="mae", kind="encoder-only",
        repository="huggingface/pytorch-image-models (timm)", version=timm.__version__,
        mimics="hf.co/timm/vit_base_patch16_224.mae model.safetensors (timm's copy of mae_pretrain_vit_base.pth; "
               "pretrained_cfg num_classes=0, global_pool 'token', mean/std ImageNet default)",
        save_call="safetensors.torch.save_file(model.state_dict(), 'mae_timm.safetensors') (timm _hub.py save_for_hf), "
                  "model = timm.create_model('vit_base_patch16_224.mae', img_size=32, patch_size=4, embed_dim=32, depth=2, "
                  "num_heads=4) with mae_official_pretrain's encoder loaded strict",
        load_call="timm.create_model('vit_base_patch16_224.mae', pretrained=True, pretrained_cfg_overlay=dict(file=path), "
                  "img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4)",
        layout="flat safetensors (no metadata): cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.* — the same "
               "names and values as mae_official_pretrain's 'model' (timm and the official encoder share names); no head "
               "(num_classes 0), no fc_norm",
        keys=describe_state_dict(model.state_dict()), same_weights_as="mae_official_pretrain",
        config=dict(TIMM_MAE_KW, in_chans=3, mlp_ratio=4.0, qkv_bias=True, layer_norm_eps=1e-6, class_token=True,
                    global_pool="token", num_classes=0, fc_norm=False),
        normalisation=IMAGENET_DEFAULT, io=save_io(name, io),
        tensors={"pixel_values": "[2,3,32,32] input (the same as mae_official_pretrain's)",
                 "features": f"[2,65,32] forward_features (cls first, after the final norm); equals "
                             f"mae_official_pretrain's latent_all_tokens to {diff:.1e} (timm's fused attention here)",
                 "pooled": "[2,32] model(pixel_values): the cls token of features (global_pool 'token', head Identity)"}), check)


# ======================================================================================================
# 6. microsoft/unilm BEiT pre-training model, {'model': state_dict}
# ======================================================================================================

def beit_masks(grid, seed):
    """unilm masking_generator.MaskingGenerator (block-wise), as run_beit_pretraining's
    DataAugmentationForBEiT: num_masking_patches 6 of 16 (75 of 196 scaled), min 2 per block (16 of 75 scaled)."""
    import random
    gen = traj.MaskingGenerator((grid, grid), num_masking_patches=6, min_num_patches=2, rng=random.Random(5000 + seed))
    return torch.stack([torch.from_numpy(gen()).flatten() for _ in range(BATCH)]).bool()


def fixture_beit_pretrain():
    name = "beit_official_pretrain"
    seed = SEEDS["beit_pretrain"]
    torch.manual_seed(seed)
    model = beit_fx.BeitForMaskedImageModeling(**BEIT_CFG).float().eval()
    perturb(model)
    for blk in model.blocks:
        scale_fused_qk(blk.attn, QK_GAIN["beit"])
    grid = BEIT_CFG["img_size"] // BEIT_CFG["patch_size"]
    x = images(seed, 16)
    mask = beit_masks(grid, seed)
    spread = attention_spread(name, lambda: model(x, mask))

    def outputs(m):
        with torch.no_grad():
            features = m.forward_features(x, mask)
            logits = m(x, mask)
            assert torch.equal(m.lm_head(features[:, 1:][mask]), logits)
        return dict(pixel_values=x, bool_masked_pos=mask.to(torch.int64), features=features, logits=logits,
                    logits_all_tokens=m.lm_head(features[:, 1:]).detach())

    io = outputs(model)
    sd = unilm_state_dict(model)
    path = OUT / f"{name}.pth"
    torch.save({'model': sd}, path)

    def check():
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        weights = dict(ckpt['model'])
        index = beit_fx.gen_relative_position_index((grid, grid))
        for k in [k for k in weights if k.endswith("relative_position_index")]:
            assert torch.equal(weights.pop(k), index), k
        m = beit_fx.BeitForMaskedImageModeling(**BEIT_CFG).float().eval()
        m.load_state_dict(weights, strict=True)
        return outputs(m)

    add_fixture(dict(
        name=name, file=path.name, family="beit", kind="mim", **UNILM_REPO,
        mimics="beit_{base,large}_patch16_224_pt22k.pth (BEiT pre-trained, self-supervised): "
               "modeling_pretrain.VisionTransformerForMaskedImageModeling",
        save_call="torch.save({'model': model_without_ddp.state_dict()}, path) (utils.save_model's 'model' entry; "
                  "the published pre-trained files carry only it)",
        load_call="torch.load(path, map_location='cpu')['model'] -> model.load_state_dict",
        torch_load_weights_only_ok=True,
        model_code="make_beit_fixtures.BeitForMaskedImageModeling (unilm's MIM wrapper on timm's BEiT Block / "
                   "RelativePositionBias, same names and math) + the persistent relative_position_index buffers "
                   "unilm writes, inserted where unilm's state_dict lists them",
        layout="dict with one key 'model': cls_token, mask_token, patch_embed.proj.*, rel_pos_bias."
               "{relative_position_bias_table [(2*4-1)^2+3, heads] = [52,2] (last 3 rows: cls->token, token->cls, cls->cls), "
               "relative_position_index int64 [17,17]}, blocks.N.{gamma_1, gamma_2, norm1, attn.q_bias, attn.v_bias "
               "(no k bias), attn.qkv.weight (no bias), attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, lm_head; no pos_embed "
               "(use_abs_pos_emb=False), no per-block tables (shared)",
        keys=describe_state_dict(sd),
        config=dict(BEIT_CFG, qkv_bias=True, layer_norm_eps=1e-6, act="GELU (exact erf)",
                    num_patches=grid * grid, rel_pos_table_rows=(2 * grid - 1) ** 2 + 3),
        normalisation=IMAGENET_INCEPTION | {"note": "run_beit_pretraining default (no --imagenet_default_mean_and_std)"},
        io=save_io(name, io),
        tensors={"pixel_values": "[2,3,32,32] input, randn (normalised)",
                 "bool_masked_pos": "[2,64] int64, 1 = masked (replaced by mask_token); unilm MaskingGenerator blocks, "
                                    f"{mask.sum(1).tolist()} masked per image, row-major patch order",
                 "features": "[2,65,32] forward_features: final norm output, cls first",
                 "logits": f"[{int(mask.sum())},32] model(pixel_values, bool_masked_pos): lm_head of the masked positions, "
                           "ordered image by image, then patch index (x[bool_masked_pos])",
                 "logits_all_tokens": "[2,64,32] lm_head of every patch (return_all_tokens=True)"},
        attention=spread), check)
    return mask


# ======================================================================================================
# 7. Hugging Face BeitForMaskedImageModeling: save_pretrained
# ======================================================================================================

def fixture_beit_hf(mask):
    from transformers import BeitConfig, BeitForMaskedImageModeling
    name = "beit_hf"
    seed = SEEDS["beit_hf"]
    torch.manual_seed(seed)
    model = BeitForMaskedImageModeling(BeitConfig(**HF_BEIT_CFG)).eval()
    perturb(model)
    scale_hf_qk(model, {"beit.": QK_GAIN["hf_beit"]})
    x = images(seed, 16)
    labels = torch.randint(0, HF_BEIT_CFG["vocab_size"], (int(mask.sum()),), generator=torch.Generator().manual_seed(6000 + seed))
    eager = BeitForMaskedImageModeling(BeitConfig(**HF_BEIT_CFG, attn_implementation="eager")).eval()
    eager.load_state_dict(model.state_dict(), strict=True)
    spread = attention_spread(name, lambda: eager(pixel_values=x, bool_masked_pos=mask))

    def outputs(m):
        with torch.no_grad():
            out = m(pixel_values=x, bool_masked_pos=mask, labels=labels)
            seq = m.layernorm(m.beit(pixel_values=x, bool_masked_pos=mask).last_hidden_state)
            # The eager twin returns the attention probabilities (sdpa does not); no mask: BEiT's figure 2.
            eager.load_state_dict(m.state_dict(), strict=True)
            attentions = torch.stack(eager.beit(pixel_values=x, output_attentions=True).attentions)
        return dict(pixel_values=x, bool_masked_pos=mask.to(torch.int64), labels=labels.to(torch.int64),
                    logits=out.logits, masked_logits=out.logits[mask], loss=out.loss.reshape(1), sequence_output=seq,
                    attentions=attentions)

    io = outputs(model)
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)

    def check():
        m, info = BeitForMaskedImageModeling.from_pretrained(d, output_loading_info=True)
        assert not any(info.values()), info  # no missing / unexpected / mismatched keys
        return outputs(m.eval())

    add_fixture(dict(
        name=name, file="beit_hf/", files=["beit_hf/config.json", "beit_hf/model.safetensors"], family="beit", kind="mim",
        repository="huggingface/transformers (BeitForMaskedImageModeling)", version=transformers.__version__,
        mimics="microsoft/beit-base-patch16-224-pt22k hub folder (config.json + model.safetensors)",
        save_call="BeitForMaskedImageModeling.save_pretrained('beit_hf')",
        load_call="BeitForMaskedImageModeling.from_pretrained('beit_hf')",
        layout="flat safetensors, transformers 4.x names (save_original_format): beit.embeddings.{cls_token, mask_token, "
               "patch_embeddings.projection.*}, beit.encoder.relative_position_bias.relative_position_bias_table [52,2] "
               "(shared; no relative_position_index in the file), beit.encoder.layer.N.{lambda_1, lambda_2, "
               "attention.attention.{query.weight, query.bias, key.weight (no bias), value.weight, value.bias}, "
               "attention.output.dense, intermediate.dense, output.dense, layernorm_before, layernorm_after}, "
               "layernorm.*, lm_head.*",
        keys=describe_state_dict(load_file(d / "model.safetensors")),
        config=dict(HF_BEIT_CFG, config_json="the folder's config.json (all BeitConfig fields; drop_path_rate 0.1 is "
                    "inert in eval; use_mean_pooling true does not affect the MIM head)"),
        normalisation=IMAGENET_INCEPTION | {"note": "BeitImageProcessor of microsoft/beit-*"},
        io=save_io(name, io),
        tensors={"pixel_values": "[2,3,32,32] input, randn (normalised)",
                 "bool_masked_pos": "[2,64] int64, 1 = masked; the same mask as beit_official_pretrain",
                 "labels": f"[{int(mask.sum())}] int64 visual-token targets of the masked positions, in masked_logits order",
                 "logits": "[2,64,32] out.logits: lm_head over every patch (cls removed) after the final layernorm",
                 "masked_logits": f"[{int(mask.sum())},32] logits[bool_masked_pos]",
                 "loss": "[1] out.loss = cross_entropy(logits[bool_masked_pos], labels)",
                 "sequence_output": "[2,65,32] layernorm(beit(...).last_hidden_state), cls first (eps 1e-12)",
                 "attentions": "[2,2,2,65,65] [layer, image, head, query, key] attention probabilities of every patch "
                               "(no mask; relative position bias included), beit(x, output_attentions=True), eager"},
        attention=spread), check)


# ======================================================================================================
# 8. microsoft/unilm BEiT fine-tuned classifier, {'model': state_dict}
# ======================================================================================================

TIMM_BEIT_KW = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def fixture_beit_finetuned():
    from timm.models.beit import Beit
    name = "beit_official_finetuned"
    seed = SEEDS["beit_finetuned"]
    torch.manual_seed(seed)
    c = BEIT_FT_CFG
    model = Beit(img_size=c["img_size"], patch_size=c["patch_size"], in_chans=c["in_chans"], num_classes=c["num_classes"],
                 global_pool="avg", embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                 qkv_bias=c["qkv_bias"], mlp_ratio=c["mlp_ratio"], init_values=c["init_values"],
                 use_abs_pos_emb=c["use_abs_pos_emb"], use_rel_pos_bias=c["use_rel_pos_bias"],
                 use_shared_rel_pos_bias=c["use_shared_rel_pos_bias"],
                 norm_layer=partial(nn.LayerNorm, eps=c["layer_norm_eps"])).eval()
    for blk in model.blocks:
        blk.attn.fused_attn = False  # unilm's explicit softmax(q k^T * scale + bias) v
    perturb(model)
    for blk in model.blocks:
        scale_fused_qk(blk.attn, QK_GAIN["beit"])
    x = images(seed, 16)
    spread = attention_spread(name, lambda: model(x))

    def outputs(m):
        with torch.no_grad():
            feats = m.forward_features(x)
            pooled = m.forward_head(feats, pre_logits=True)
            logits = m(x)
        return dict(pixel_values=x, pooled=pooled, logits=logits)

    io = outputs(model)
    sd = unilm_state_dict(model)
    path = OUT / f"{name}.pth"
    torch.save({'model': sd}, path)

    def check():
        m = timm.create_model("beit_base_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=5),
                              **TIMM_BEIT_KW).eval()
        for blk in m.blocks:
            blk.attn.fused_attn = False
        return outputs(m)

    add_fixture(dict(
        name=name, file=path.name, family="beit", kind="classifier", **UNILM_REPO,
        mimics="beit_base_patch16_224_pt22k_ft22kto1k.pth (modeling_finetune.VisionTransformer, use_rel_pos_bias, "
               "use_mean_pooling; run_class_finetuning.py)",
        save_call="torch.save({'model': model_without_ddp.state_dict()}, path) (utils.save_model's 'model' entry)",
        load_call="unilm: model.load_state_dict(torch.load(path)['model']); timm: timm.create_model('beit_base_patch16_224', "
                  "pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=5), img_size=16, patch_size=4, embed_dim=32, "
                  "depth=2, num_heads=2, num_classes=5) (checkpoint_filter_fn drops relative_position_index; num_classes=5 also in the overlay, else timm drops the head)",
        torch_load_weights_only_ok=True,
        model_code="timm.models.beit.Beit (unilm's parameter names and math: q_bias / v_bias, gamma_1 / gamma_2, "
                   "fc_norm, head) with the per-block relative_position_index buffers unilm writes inserted after "
                   "each table; so the file is unilm's layout and, minus those buffers, timm's beit names",
        layout="dict with one key 'model': cls_token, patch_embed.proj.*, blocks.N.{gamma_1, gamma_2, norm1, attn.q_bias, "
               "attn.v_bias, attn.relative_position_bias_table [52,2], attn.relative_position_index int64 [17,17], "
               "attn.qkv.weight, attn.proj, norm2, mlp.fc1, mlp.fc2}, fc_norm.*, head.{weight [5,32], bias}; no pos_embed, "
               "no norm (use_mean_pooling: norm is Identity)",
        keys=describe_state_dict(sd),
        config=dict(c, act="GELU (exact erf)", rel_pos_table_rows=7 * 7 + 3,
                    pooling="mean of the patch tokens (cls excluded), fc_norm, head"),
        normalisation=IMAGENET_INCEPTION | {"note": "run_class_finetuning default"},
        io=save_io(name, io),
        tensors={"pixel_values": "[2,3,32,32] input, randn (normalised)",
                 "pooled": "[2,32] fc_norm(mean of the 16 patch tokens after the last block)",
                 "logits": "[2,5] head(pooled)"},
        attention=spread), check)


# ======================================================================================================
# 9. microsoft/SimMIM: Swin SimMIM training checkpoint (utils.save_checkpoint)
# ======================================================================================================

SIMMIM_TRAIN_ITERS = 2


def simmim_config():
    """config.py get_config: _C, merged with a yaml like configs/swin_base__100ep/simmim_pretrain__*.yaml for
    the tiny model, then update_config's command-line values and main_simmim.py's linear lr scaling."""
    config = oc.simmim_default_config()
    config.defrost()
    config.merge_from_other_cfg(oc.simmim_default_config().__class__({
        "MODEL": {"TYPE": "swin", "NAME": "simmim_pretrain", "DROP_PATH_RATE": 0.0,
                  "SWIN": {"PATCH_SIZE": SWIN_CFG["patch_size"], "EMBED_DIM": SWIN_CFG["embed_dim"],
                           "DEPTHS": list(SWIN_CFG["depths"]), "NUM_HEADS": list(SWIN_CFG["num_heads"]),
                           "WINDOW_SIZE": SWIN_CFG["window_size"]}},
        "DATA": {"IMG_SIZE": SWIN_CFG["img_size"], "MASK_PATCH_SIZE": SIMMIM_MASK["mask_patch_size"],
                 "MASK_RATIO": SIMMIM_MASK["mask_ratio"]},
        "TRAIN": {"EPOCHS": 1, "WARMUP_EPOCHS": 0, "BASE_LR": 2e-4, "WARMUP_LR": 1e-6, "MIN_LR": 1e-5, "WEIGHT_DECAY": 0.05},
        "PRINT_FREQ": 100, "SAVE_FREQ": 5, "TAG": "simmim_pretrain__swin_tiny__img32_window4"}))
    # update_config(config, args): --batch-size 2 --data-path ... --amp-opt-level O1 (argparse default), local_rank 0
    config.DATA.BATCH_SIZE = BATCH
    config.DATA.DATA_PATH = "/path/to/imagenet/train"
    config.AMP_OPT_LEVEL = "O1"
    config.OUTPUT = "output"
    config.LOCAL_RANK = 0
    config.OUTPUT = os.path.join(config.OUTPUT, config.MODEL.NAME, config.TAG)
    # main_simmim.py: linear scaling by total batch / 512 (world size 1, ACCUMULATION_STEPS 0)
    config.TRAIN.BASE_LR = config.TRAIN.BASE_LR * config.DATA.BATCH_SIZE * 1 / 512.0
    config.TRAIN.WARMUP_LR = config.TRAIN.WARMUP_LR * config.DATA.BATCH_SIZE * 1 / 512.0
    config.TRAIN.MIN_LR = config.TRAIN.MIN_LR * config.DATA.BATCH_SIZE * 1 / 512.0
    config.freeze()
    return config


def build_simmim_from_config(config):
    """models/simmim.py build_simmim for MODEL.TYPE 'swin', encoder_stride from the stage count (see SIMMIM_STRIDE)."""
    encoder = oc.SwinTransformerForSimMIM(
        img_size=config.DATA.IMG_SIZE, patch_size=config.MODEL.SWIN.PATCH_SIZE, in_chans=config.MODEL.SWIN.IN_CHANS,
        num_classes=0, embed_dim=config.MODEL.SWIN.EMBED_DIM, depths=config.MODEL.SWIN.DEPTHS,
        num_heads=config.MODEL.SWIN.NUM_HEADS, window_size=config.MODEL.SWIN.WINDOW_SIZE,
        mlp_ratio=config.MODEL.SWIN.MLP_RATIO, qkv_bias=config.MODEL.SWIN.QKV_BIAS, qk_scale=config.MODEL.SWIN.QK_SCALE,
        drop_rate=config.MODEL.DROP_RATE, drop_path_rate=config.MODEL.DROP_PATH_RATE, ape=config.MODEL.SWIN.APE,
        patch_norm=config.MODEL.SWIN.PATCH_NORM, use_checkpoint=config.TRAIN.USE_CHECKPOINT)
    stride = config.MODEL.SWIN.PATCH_SIZE * 2 ** (len(config.MODEL.SWIN.DEPTHS) - 1)
    return oc.SimMIM(encoder=encoder, encoder_stride=stride)


def scale_swin_qk(model):
    for layer, gain in zip(model.layers, QK_GAIN["swin"], strict=True):
        for blk in layer.blocks:
            scale_fused_qk(blk.attn, gain)


def simmim_mask(seed):
    rng = np.random.RandomState(7000 + seed)
    gen = traj.SimMIMMaskGenerator(input_size=SWIN_CFG["img_size"], mask_patch_size=SIMMIM_MASK["mask_patch_size"],
                                   model_patch_size=SWIN_CFG["patch_size"], mask_ratio=SIMMIM_MASK["mask_ratio"], rng=rng)
    return torch.stack([torch.from_numpy(gen()) for _ in range(BATCH)]).float()


def fixture_simmim():
    from timm.scheduler.cosine_lr import CosineLRScheduler
    name = "simmim_swin"
    seed = SEEDS["simmim"]
    config = simmim_config()
    torch.manual_seed(seed)
    model = build_simmim_from_config(config)
    perturb(model)
    scale_swin_qk(model.encoder)
    # training: optimizer.py build_pretrain_optimizer + lr_scheduler.py build_scheduler + main_simmim.py
    # train_one_epoch (ACCUMULATION_STEPS 0; AMP O1 is apex's, run here in float32 with clipping as its branch does)
    skip, skip_keywords = model.no_weight_decay(), model.no_weight_decay_keywords()
    parameters, _ = traj.get_pretrain_param_groups(model, skip, skip_keywords)
    optimizer = torch.optim.AdamW(parameters, eps=config.TRAIN.OPTIMIZER.EPS, betas=config.TRAIN.OPTIMIZER.BETAS,
                                  lr=config.TRAIN.BASE_LR, weight_decay=config.TRAIN.WEIGHT_DECAY)
    n_iter_per_epoch = SIMMIM_TRAIN_ITERS
    lr_scheduler = CosineLRScheduler(  # SimMIM passes t_mul=1., which timm >= 0.5 calls cycle_mul
        optimizer, t_initial=int(config.TRAIN.EPOCHS * n_iter_per_epoch), cycle_mul=1., lr_min=config.TRAIN.MIN_LR,
        warmup_lr_init=config.TRAIN.WARMUP_LR, warmup_t=int(config.TRAIN.WARMUP_EPOCHS * n_iter_per_epoch),
        cycle_limit=1, t_in_epochs=False)
    g = torch.Generator().manual_seed(8000 + seed)
    data = torch.randn(SIMMIM_TRAIN_ITERS, BATCH, 3, 32, 32, generator=g)
    masks = [simmim_mask(seed + 100 + i) for i in range(SIMMIM_TRAIN_ITERS)]
    model.train()
    optimizer.zero_grad()
    record = dict(loss=[], grad_norm=[], lr=[])
    epoch = 0
    for idx in range(n_iter_per_epoch):
        loss = model(data[idx], masks[idx])
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.TRAIN.CLIP_GRAD)
        record["lr"].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr_scheduler.step_update(epoch * n_iter_per_epoch + idx)
        record["loss"].append(loss.item())
        record["grad_norm"].append(grad_norm.item())
    model.eval()

    x = images(seed, 32)
    mask = simmim_mask(seed)
    spread = attention_spread(name, lambda: model(x, mask))

    def outputs(m):
        with torch.no_grad():
            z = m.encoder(x, mask)
            x_rec = m.decoder(z)
            loss = m(x, mask)
        return dict(pixel_values=x, mask=mask, loss=loss.reshape(1), encoder_features=z, reconstruction=x_rec)

    io = outputs(model)
    path = OUT / f"{name}.pth"
    save_state = {'model': model.state_dict(),
                  'optimizer': optimizer.state_dict(),
                  'lr_scheduler': lr_scheduler.state_dict(),
                  'max_accuracy': 0.,
                  'epoch': epoch,
                  'config': config}
    if config.AMP_OPT_LEVEL != "O0":
        # apex amp.state_dict() (apex is not installable here): one loss scaler, dynamic scale 2**16, and
        # the steps since its last change
        save_state['amp'] = collections.OrderedDict(loss_scaler0={'loss_scale': 65536.0, 'unskipped': SIMMIM_TRAIN_ITERS})
    torch.save(save_state, path)

    def check():
        ckpt = torch.load(path, map_location='cpu', weights_only=False)  # yacs CfgNode inside
        assert list(ckpt) == ['model', 'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch', 'config', 'amp']
        assert ckpt['config'] == config
        m = build_simmim_from_config(ckpt['config']).eval()
        m.load_state_dict(ckpt['model'], strict=True)  # utils.load_checkpoint uses strict=False
        opt = torch.optim.AdamW(traj.get_pretrain_param_groups(m, skip, skip_keywords)[0], lr=1.0)
        opt.load_state_dict(ckpt['optimizer'])
        return outputs(m)

    sd = model.state_dict()
    add_fixture(dict(
        name=name, file=path.name, family="simmim", kind="mim (training checkpoint)", **SIMMIM_REPO,
        mimics="ckpt_epoch_<epoch>.pth written by main_simmim.py through utils.save_checkpoint (swin, e.g. "
               "simmim_pretrain__swin_base__img192_window6__100ep)",
        save_call="torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'lr_scheduler': "
                  "lr_scheduler.state_dict(), 'max_accuracy': 0., 'epoch': epoch, 'config': config} + {'amp': "
                  "amp.state_dict()} (AMP_OPT_LEVEL 'O1', the argparse default), os.path.join(config.OUTPUT, "
                  "'ckpt_epoch_0.pth'))",
        load_call="torch.load(path, map_location='cpu') (weights_only=False: 'config' is a yacs CfgNode, needs yacs); "
                  "model.load_state_dict(checkpoint['model'], strict=False); for fine-tuning utils.load_pretrained strips "
                  "'encoder.' and drops relative_position_index / attn_mask",
        torch_load_weights_only_ok=False,
        not_exact="'amp' is written as apex's amp.state_dict() layout (OrderedDict {'loss_scaler0': {'loss_scale': "
                  "65536.0, 'unskipped': 2}}), emulated: apex is not installed here and training ran in float32; "
                  "'lr_scheduler' is timm 1.0.31's CosineLRScheduler.state_dict() (SimMIM used timm 0.4.12, whose dict "
                  "has fewer fields); encoder_stride is 8 for this 3-stage patch-2 Swin where build_simmim hard-codes 32 "
                  "(= patch 4 * 2**3 of the published 4-stage Swins)",
        layout="dict: 'model' (SimMIM state dict: encoder.mask_token, encoder.patch_embed.{proj,norm}.*, "
               "encoder.layers.i.blocks.j.{norm1, attn.relative_position_bias_table [49,heads], "
               "attn.relative_position_index int64 [16,16], attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, attn_mask "
               "[nW,16,16] float (0/-100) only in shifted blocks of stages whose resolution exceeds the window}, "
               "encoder.layers.i.downsample.{reduction.weight, norm.*} at the END of stages 0 and 1 (official layout), "
               "encoder.norm.*, decoder.0.{weight [192,24,1,1], bias} (1x1 conv to stride^2*3 channels; decoder.1 is "
               "PixelShuffle(8)); no head), 'optimizer' (AdamW: groups [has_decay, no_decay (weight_decay 0)]), "
               "'lr_scheduler' (dict), 'max_accuracy' float, 'epoch' int, 'config' (yacs CfgNode, a dict subclass "
               "pickled with copyreg._reconstructor + its __dict__), 'amp' (OrderedDict)",
        keys=describe_state_dict(sd), config_dump=config.dump(), training_record=record, amp=dict(save_state['amp']),
        lr_scheduler_keys=sorted(lr_scheduler.state_dict()),
        config=dict(SWIN_CFG, encoder_stride=SIMMIM_STRIDE, layer_norm_eps=1e-5, act="GELU (exact erf)",
                    stage_resolutions=[16, 8, 4], shifted_stages=[0, 1],
                    stage_notes="stage 2 (4x4) fits one window: shift 0, no attn_mask, window stays 4",
                    mask_patch_size=SIMMIM_MASK["mask_patch_size"], mask_ratio=SIMMIM_MASK["mask_ratio"],
                    loss="L1 on masked pixels: (|x - x_rec| * mask_pixels).sum() / (mask_pixels.sum() + 1e-5) / in_chans"),
        normalisation=IMAGENET_DEFAULT, io=save_io(name, io),
        tensors={"pixel_values": "[2,3,32,32] input, randn (normalised)",
                 "mask": "[2,16,16] float, 1 = masked, on the model's 2-px patch grid: data_simmim.MaskGenerator "
                         "(input 32, mask_patch 8, model_patch 2, ratio 0.6: ceil(16 * 0.6) = 10 of the 4x4 mask "
                         "patches, each repeated 4x4)",
                 "loss": "[1] model(pixel_values, mask)",
                 "encoder_features": "[2,32,4,4] model.encoder(pixel_values, mask): the final norm output as B C H W",
                 "reconstruction": "[2,3,32,32] model.decoder(encoder_features) (x_rec)"},
        attention=spread), check)


# ======================================================================================================
# 10. microsoft/Swin-Transformer classifier {'model': sd} and timm's SwinTransformer safetensors
# ======================================================================================================

TIMM_SWIN_KW = dict(img_size=32, patch_size=2, embed_dim=6, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4,
                    num_classes=SWIN_CLASSES)


def fixture_swin():
    name = "swin_official_finetuned"
    seed = SEEDS["swin"]
    torch.manual_seed(seed)
    model = oc.SwinTransformer(**SWIN_CFG, num_classes=SWIN_CLASSES).eval()
    perturb(model)
    scale_swin_qk(model)
    x = images(seed, 32)
    spread = attention_spread(name, lambda: model(x))

    def outputs(m):
        with torch.no_grad():
            pooled = m.forward_features(x)
            logits = m(x)
        if isinstance(m, oc.SwinTransformer):
            return dict(pixel_values=x, pooled=pooled, logits=logits)
        return dict(pixel_values=x, pooled=m.forward_head(pooled, pre_logits=True), logits=logits)

    io = outputs(model)
    path = OUT / f"{name}.pth"
    torch.save({'model': model.state_dict()}, path)

    def check():
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        m = oc.SwinTransformer(**SWIN_CFG, num_classes=SWIN_CLASSES).eval()
        m.load_state_dict(ckpt['model'], strict=True)
        return outputs(m)

    sd = model.state_dict()
    add_fixture(dict(
        name=name, file=path.name, family="swin", kind="classifier", **SWIN_REPO,
        mimics="swin_{tiny,small,base}_patch4_window7_224.pth (GitHub release files; main.py --eval --resume)",
        save_call="torch.save({'model': model.state_dict()}, path) (utils.save_checkpoint's 'model' entry; the "
                  "published classifiers carry only it)",
        load_call="torch.load(path, map_location='cpu')['model'] -> SwinTransformer.load_state_dict",
        torch_load_weights_only_ok=True,
        model_code="official_code.SwinTransformer (SimMIM's copy of Swin-Transformer models/swin_transformer.py; "
                   "identical modules and math without the optional fused-window CUDA kernel)",
        layout="dict with one key 'model': patch_embed.{proj,norm}.*, layers.i.blocks.j.{norm1, attn.relative_position_bias_table, "
               "attn.relative_position_index int64 [16,16], attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, attn_mask "
               "[nW,16,16] (shifted blocks of stages 0-1)}, layers.i.downsample.{reduction.weight, norm.*} at the END of "
               "stages 0, 1 (timm >= 0.9 puts it at the START of stages 1, 2), norm.*, head.{weight [5,24], bias} "
               "(timm: head.fc.*)",
        keys=describe_state_dict(sd),
        config=dict(SWIN_CFG, num_classes=SWIN_CLASSES, layer_norm_eps=1e-5, act="GELU (exact erf)",
                    stage_resolutions=[16, 8, 4], shifted_stages=[0, 1],
                    stage_notes="stage 2 (4x4) fits one window: shift 0, no attn_mask",
                    pooling="final norm, mean over tokens (AdaptiveAvgPool1d), head"),
        normalisation=IMAGENET_DEFAULT, io=save_io(name, io),
        tensors={"pixel_values": "[2,3,32,32] input, randn (normalised)",
                 "pooled": "[2,32] forward_features: norm, then mean over the 16 final tokens",
                 "logits": "[2,5] head(pooled)"},
        attention=spread), check)

    # --- timm: the same weights through timm's checkpoint_filter_fn, saved as timm hub files are ---
    name_t = "swin_timm"
    tm = timm.create_model("swin_tiny_patch4_window7_224", pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(path), num_classes=SWIN_CLASSES),
                           **TIMM_SWIN_KW).eval()
    path_t = OUT / f"{name_t}.safetensors"
    save_file(tm.state_dict(), path_t)
    io_t = outputs(tm)
    diff = (io_t["logits"] - io["logits"]).abs().max().item()
    assert diff < 1e-5, diff

    def check_t():
        m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path_t), num_classes=SWIN_CLASSES), **TIMM_SWIN_KW).eval()
        return outputs(m)

    add_fixture(dict(
        name=name_t, file=path_t.name, family="swin", kind="classifier",
        repository="huggingface/pytorch-image-models (timm)", version=timm.__version__,
        mimics="hf.co/timm/swin_tiny_patch4_window7_224.ms_in1k model.safetensors (timm >= 0.9 names)",
        save_call="safetensors.torch.save_file(model.state_dict(), 'swin_timm.safetensors') with model = "
                  "timm.create_model('swin_tiny_patch4_window7_224', pretrained=True, pretrained_cfg_overlay="
                  "dict(file='swin_official_finetuned.pth', num_classes=5), img_size=32, patch_size=2, embed_dim=6, depths=(2,2,2), "
                  "num_heads=(2,2,4), window_size=4, num_classes=5) (checkpoint_filter_fn converts the official layout)",
        load_call="timm.create_model('swin_tiny_patch4_window7_224', pretrained=True, pretrained_cfg_overlay=dict(file=path, "
                  "num_classes=5), "
                  "<same kwargs>)",
        layout="flat safetensors (no metadata): patch_embed.{proj,norm}.*, layers.i.downsample.{norm.*, reduction.weight} "
               "at the START of stages 1, 2 (official layers.(i-1).downsample), layers.i.blocks.j.{norm1, "
               "attn.relative_position_bias_table, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm.*, head.fc.*; "
               "no relative_position_index, no attn_mask (non-persistent in timm)",
        keys=describe_state_dict(tm.state_dict()), same_weights_as="swin_official_finetuned",
        config=dict(TIMM_SWIN_KW, in_chans=3, mlp_ratio=4.0, qkv_bias=True, layer_norm_eps=1e-5, global_pool="avg"),
        normalisation=IMAGENET_DEFAULT, io=save_io(name_t, io_t),
        tensors={"pixel_values": "[2,3,32,32] the same input as swin_official_finetuned",
                 "pooled": "[2,32] forward_head(forward_features(x), pre_logits=True)",
                 "logits": f"[2,5] model(x); equals swin_official_finetuned's logits to {diff:.1e}"}), check_t)


# ======================================================================================================
# 10b. Hugging Face SwinForImageClassification and SwinForMaskedImageModeling, save_pretrained
# ======================================================================================================

HF_SWIN_CFG = dict(image_size=SWIN_CFG["img_size"], patch_size=SWIN_CFG["patch_size"], num_channels=3,
                   embed_dim=SWIN_CFG["embed_dim"], depths=SWIN_CFG["depths"], num_heads=SWIN_CFG["num_heads"],
                   window_size=SWIN_CFG["window_size"], mlp_ratio=4.0, drop_path_rate=0.0, encoder_stride=SIMMIM_STRIDE)


def fixture_swin_hf(simmim):
    """`SwinForImageClassification` (the layout of microsoft/swin-tiny-patch4-window7-224) or, with `simmim`,
    `SwinForMaskedImageModeling` (transformers' SimMIM), saved by save_pretrained; weights drawn here, not copied
    from the official fixtures, so that the Rust test checks mim's Hugging Face names independently."""
    from transformers import SwinConfig, SwinForImageClassification, SwinForMaskedImageModeling
    name = "simmim_hf" if simmim else "swin_hf"
    seed = SEEDS[name]
    cls = SwinForMaskedImageModeling if simmim else SwinForImageClassification
    config = SwinConfig(**HF_SWIN_CFG, **({} if simmim else dict(num_labels=SWIN_CLASSES)))
    torch.manual_seed(seed)
    model = cls(config).eval()
    perturb(model)
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if name_.endswith(("q_proj.weight", "k_proj.weight")):
                stage = int(name_.split("encoder.layers.")[1].split(".")[0])
                p.mul_(QK_GAIN["swin"][stage])
    x = images(seed, 32)
    mask = simmim_mask(seed)  # [2,16,16] on the 2-px patch grid
    bool_masked_pos = mask.flatten(1).bool()
    eager = cls(SwinConfig(**config.to_diff_dict(), attn_implementation="eager")).eval()
    eager.load_state_dict(model.state_dict(), strict=True)
    spread = attention_spread(name, lambda: eager(x, bool_masked_pos=bool_masked_pos) if simmim else eager(x))

    def outputs(m):
        with torch.no_grad():
            if simmim:
                out = m(pixel_values=x, bool_masked_pos=bool_masked_pos)
                seq = m.swin(x, bool_masked_pos=bool_masked_pos).last_hidden_state  # [B, L, C] after the final norm
                b, l, c = seq.shape
                z = seq.transpose(1, 2).reshape(b, c, int(l ** 0.5), int(l ** 0.5))
                return dict(pixel_values=x, mask=mask, loss=out.loss.reshape(1), encoder_features=z,
                            reconstruction=out.reconstruction)
            out = m(pixel_values=x)
            return dict(pixel_values=x, pooled=m.swin(x).pooler_output, logits=out.logits)

    io = outputs(model)
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)

    def check():
        m, info = cls.from_pretrained(d, output_loading_info=True)
        assert not any(info.values()), info
        return outputs(m.eval())

    tensors = ({"pixel_values": "[2,3,32,32] input, randn (normalised)",
                "mask": "[2,16,16] float, 1 = masked, on the 2-px patch grid (the SimMIM generator of simmim_swin); "
                        "bool_masked_pos = mask.flatten(1)",
                "loss": "[1] out.loss: L1 on masked pixels / (masked pixels + 1e-5) / channels",
                "encoder_features": "[2,24,4,4] swin(x, bool_masked_pos).last_hidden_state as B C H W",
                "reconstruction": "[2,3,32,32] out.reconstruction (decoder conv + PixelShuffle(8))"}
               if simmim else
               {"pixel_values": "[2,3,32,32] input, randn (normalised)",
                "pooled": "[2,24] swin(x).pooler_output: final layernorm, mean over the 16 final tokens",
                "logits": "[2,5] classifier(pooled)"})
    add_fixture(dict(
        name=name, file=f"{name}/", files=[f"{name}/config.json", f"{name}/model.safetensors"], family="swin",
        kind="mim" if simmim else "classifier",
        repository=f"huggingface/transformers ({cls.__name__})", version=transformers.__version__,
        mimics="a SimMIM-pretrained Swin in transformers' SwinForMaskedImageModeling" if simmim
        else "microsoft/swin-tiny-patch4-window7-224 hub folder (config.json + model.safetensors)",
        save_call=f"{cls.__name__}.save_pretrained('{name}')", load_call=f"{cls.__name__}.from_pretrained('{name}')",
        layout="flat safetensors, transformers 4.x names: swin.embeddings.{patch_embeddings.projection.*, norm.*"
               + (", mask_token" if simmim else "") + "}, swin.encoder.layers.i.blocks.j.{layernorm_before, "
               "attention.self.{query, key, value, relative_position_bias_table}, attention.output.dense, layernorm_after, "
               "intermediate.dense, output.dense}, swin.encoder.layers.i.downsample.{reduction.weight, norm.*} at the END "
               "of stages 0, 1 (official layout), swin.layernorm.*, "
               + ("decoder.0.{weight [192,24,1,1], bias}" if simmim else "classifier.*")
               + "; no relative_position_index (non-persistent)",
        keys=describe_state_dict(load_file(d / "model.safetensors")),
        config=dict(HF_SWIN_CFG, config_json="the folder's config.json", layer_norm_eps=1e-5),
        normalisation=IMAGENET_DEFAULT, io=save_io(name, io), tensors=tensors, attention=spread), check)


# ======================================================================================================
# 11. HF ViTMAE config.json edge cases (no weights)
# ======================================================================================================

def hf_config_variants():
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    base = dict(HF_MAE_CFG, model_type="vit_mae", architectures=["ViTMAEForPreTraining"])
    variants = [
        ("hidden_act_relu", dict(base, hidden_act="relu"), "activation other than gelu"),
        ("hidden_act_gelu_new", dict(base, hidden_act="gelu_new"), "tanh-approximated GELU (HF 'gelu_new')"),
        ("qkv_bias_false", dict(base, qkv_bias=False), "no q/k/v biases (the files would lack *.bias of query/key/value)"),
        ("image_size_rect", dict(base, image_size=[32, 64]), "non-square image_size list"),
        ("layer_norm_eps_1e-12", dict(base, layer_norm_eps=1e-12), "HF's default eps, spelled out (official MAE uses 1e-6)"),
        ("layer_norm_eps_1e-6", dict(base, layer_norm_eps=1e-6), "the official MAE eps"),
        ("missing_keys", dict(model_type="vit_mae", architectures=["ViTMAEForPreTraining"], hidden_size=32,
                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
         "only a few keys: everything else takes ViTMAEConfig's defaults (image_size 224, patch 16, decoder 512x8, "
         "mask_ratio 0.75, norm_pix_loss false, eps 1e-12, gelu)"),
    ]
    out = []
    for name, cfg, note in variants:
        kwargs = {k: v for k, v in cfg.items() if k != "model_type"}
        resolved = ViTMAEConfig(**kwargs)
        entry = dict(name=name, note=note, config_json=cfg, resolved=resolved.to_dict())
        # does transformers itself run it? (a tiny forward; the missing-keys one is the 224 default size)
        try:
            torch.manual_seed(0)
            m = ViTMAEForPreTraining(resolved).eval()
            size = resolved.image_size if isinstance(resolved.image_size, (list, tuple)) else [resolved.image_size] * 2
            with torch.no_grad():
                m(pixel_values=torch.randn(1, 3, *size))
            entry["transformers_forward"] = "ok"
        except Exception as e:  # noqa: BLE001 - recorded for the Rust side's honour-or-refuse decision
            entry["transformers_forward"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        out.append(entry)
    doc = dict(purpose="HF ViTMAE config.json edge cases for config-parsing tests (honour or refuse): config_json is "
                       "what a hub config.json would hold, resolved is ViTMAEConfig(**config_json).to_dict() "
                       f"(transformers {transformers.__version__}), transformers_forward whether "
                       "ViTMAEForPreTraining runs a random input of that size",
               variants=out)
    path = OUT / "hf_config_variants.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    for e in out:
        print(f"  {e['name']}: transformers forward {e['transformers_forward']}")
    return path.name


# ======================================================================================================
# Verification, official-code cross-check, manifest
# ======================================================================================================

def verify():
    print(f"\n{'fixture':32} {'tensors':>7} {'max |diff|':>11}  tol   result")
    rows = []
    for name, io_name, check in CHECKS:
        ref = load_file(OUT / io_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = check()
        assert set(again) == set(ref), (name, set(again) ^ set(ref))
        worst = 0.0
        for k, v in ref.items():
            a = again[k]
            assert a.shape == v.shape and a.dtype == v.dtype, (name, k, a.shape, v.shape, a.dtype, v.dtype)
            worst = max(worst, (a.double() - v.double()).abs().max().item())
        ok = worst <= TOL
        rows.append(dict(fixture=name, tensors=len(ref), max_abs_diff=worst, tolerance=TOL, ok=ok))
        print(f"{name:32} {len(ref):7d} {worst:11.2e}  {TOL:.0e} {'ok' if ok else 'FAIL'}")
    assert all(r["ok"] for r in rows)
    return rows


OFFICIAL_SNIPPET = r'''
import json, sys, types, importlib.util, pathlib, warnings
warnings.simplefilter("ignore")
import torch, numpy as np
from safetensors.torch import load_file
srcs, out, pkg, C = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), json.loads(sys.argv[4])
res = {}

def cmp(name, got):
    ref = load_file(out / f"{name}_io.safetensors")
    res[name] = max((got[k].double() - ref[k].double()).abs().max().item() for k in got)

def strict(model, sd, name):
    model.load_state_dict(sd, strict=True)
    assert list(model.state_dict()) == list(sd), f"{name}: key order differs from the official state_dict()"

def load(path):
    return torch.load(out / path, map_location="cpu", weights_only=False)

def run_unilm(src):
    sys.path.insert(0, str(src / "beit"))
    import modeling_finetune, modeling_pretrain
    from functools import partial
    x = load_file(out / "beit_official_pretrain_io.safetensors")
    b = C["beit"]
    m = modeling_pretrain.VisionTransformerForMaskedImageModeling(img_size=b["img_size"], patch_size=b["patch_size"],
        vocab_size=b["vocab_size"], embed_dim=b["embed_dim"], depth=b["depth"], num_heads=b["num_heads"],
        mlp_ratio=b["mlp_ratio"], qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        init_values=b["layer_scale_init_value"], use_abs_pos_emb=b["use_abs_pos_emb"],
        use_rel_pos_bias=b["use_rel_pos_bias"], use_shared_rel_pos_bias=b["use_shared_rel_pos_bias"]).eval()
    strict(m, load("beit_official_pretrain.pth")["model"], "beit_official_pretrain")
    mask = x["bool_masked_pos"].bool()
    with torch.no_grad():
        f = m.forward_features(x["pixel_values"], bool_masked_pos=mask)
        cmp("beit_official_pretrain", dict(features=f, logits=m(x["pixel_values"], mask),
            logits_all_tokens=m(x["pixel_values"], mask, return_all_tokens=True)))
    x = load_file(out / "beit_official_finetuned_io.safetensors")
    b = C["beit_ft"]
    m = modeling_finetune.VisionTransformer(img_size=b["img_size"], patch_size=b["patch_size"], num_classes=b["num_classes"],
        embed_dim=b["embed_dim"], depth=b["depth"], num_heads=b["num_heads"], mlp_ratio=b["mlp_ratio"], qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=b["layer_norm_eps"]), init_values=b["init_values"],
        use_abs_pos_emb=b["use_abs_pos_emb"], use_rel_pos_bias=b["use_rel_pos_bias"],
        use_shared_rel_pos_bias=b["use_shared_rel_pos_bias"], use_mean_pooling=b["use_mean_pooling"]).eval()
    strict(m, load("beit_official_finetuned.pth")["model"], "beit_official_finetuned")
    with torch.no_grad():
        cmp("beit_official_finetuned", dict(pooled=m.forward_features(x["pixel_values"]), logits=m(x["pixel_values"])))

def run_simmim(src):
    sys.path.insert(0, str(src))
    from models.simmim import SimMIM, SwinTransformerForSimMIM
    ck = load("simmim_swin.pth"); c = ck["config"]
    enc = SwinTransformerForSimMIM(img_size=c.DATA.IMG_SIZE, patch_size=c.MODEL.SWIN.PATCH_SIZE, in_chans=3, num_classes=0,
        embed_dim=c.MODEL.SWIN.EMBED_DIM, depths=c.MODEL.SWIN.DEPTHS, num_heads=c.MODEL.SWIN.NUM_HEADS,
        window_size=c.MODEL.SWIN.WINDOW_SIZE, mlp_ratio=c.MODEL.SWIN.MLP_RATIO, qkv_bias=c.MODEL.SWIN.QKV_BIAS,
        qk_scale=c.MODEL.SWIN.QK_SCALE, drop_rate=c.MODEL.DROP_RATE, drop_path_rate=c.MODEL.DROP_PATH_RATE,
        ape=c.MODEL.SWIN.APE, patch_norm=c.MODEL.SWIN.PATCH_NORM)
    m = SimMIM(encoder=enc, encoder_stride=C["simmim_stride"]).eval()
    strict(m, ck["model"], "simmim_swin")
    x = load_file(out / "simmim_swin_io.safetensors")
    with torch.no_grad():
        z = m.encoder(x["pixel_values"], x["mask"])
        cmp("simmim_swin", dict(loss=m(x["pixel_values"], x["mask"]).reshape(1), encoder_features=z, reconstruction=m.decoder(z)))

def run_swin(src):
    spec = importlib.util.spec_from_file_location("swin_official", src / "models" / "swin_transformer.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    m = mod.SwinTransformer(num_classes=C["swin_classes"], **C["swin"]).eval()
    strict(m, load("swin_official_finetuned.pth")["model"], "swin_official_finetuned")
    x = load_file(out / "swin_official_finetuned_io.safetensors")
    with torch.no_grad():
        cmp("swin_official_finetuned", dict(pooled=m.forward_features(x["pixel_values"]), logits=m(x["pixel_values"])))

def run_mae(src):
    # models_mae.py / util/pos_embed.py unmodified except: qk_scale=None (gone from timm 1.0's Block) and np.float
    (pkg / "util").mkdir(parents=True, exist_ok=True)
    (pkg / "util" / "__init__.py").write_text("")
    (pkg / "util" / "pos_embed.py").write_text((src / "util" / "pos_embed.py").read_text().replace("dtype=np.float)", "dtype=np.float64)"))
    (pkg / "models_mae.py").write_text((src / "models_mae.py").read_text().replace("qk_scale=None, ", ""))
    (pkg / "models_vit.py").write_text((src / "models_vit.py").read_text())
    sys.path.insert(0, str(pkg))
    import models_mae, models_vit
    from functools import partial
    kw = dict(C["mae"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    for name, npl in [("mae_official_visualize", False), ("mae_official_train_checkpoint", True)]:
        m = models_mae.MaskedAutoencoderViT(norm_pix_loss=npl, **kw).eval()
        for blk in list(m.blocks) + list(m.decoder_blocks):
            blk.attn.fused_attn = False  # an attribute, not a code change: timm 0.3.2's explicit attention
        strict(m, load(f"{name}.pth")["model"], name)
        x = load_file(out / f"{name}_io.safetensors")
        torch.manual_seed(123)  # the official random_masking draws torch.rand(N, L): the recorded noise
        with torch.no_grad():
            loss, pred, mask = m(x["pixel_values"], mask_ratio=0.75)
            torch.manual_seed(123)
            latent, _, ids_restore = m.forward_encoder(x["pixel_values"], 0.75)
        cmp(name, dict(loss=loss.reshape(1), pred=pred, mask=mask, ids_restore=ids_restore, latent=latent))
    m = models_mae.MaskedAutoencoderViT(norm_pix_loss=True, **kw).eval()
    for blk in m.blocks:
        blk.attn.fused_attn = False
    missing, unexpected = m.load_state_dict(load("mae_official_pretrain.pth")["model"], strict=False)
    assert not unexpected and all(k == "mask_token" or k.startswith("decoder") for k in missing), (missing, unexpected)
    x = load_file(out / "mae_official_pretrain_io.safetensors")["pixel_values"]
    with torch.no_grad():  # every patch in order: forward_encoder's steps without random_masking
        h = m.patch_embed(x) + m.pos_embed[:, 1:, :]
        h = torch.cat(((m.cls_token + m.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1), h), dim=1)
        for blk in m.blocks:
            h = blk(h)
        cmp("mae_official_pretrain", dict(latent_all_tokens=m.norm(h)))
    # models_vit on timm 1.0: timm's forward_head would pool and fc_norm again, so call it as timm 0.3.2 did
    f = C["mae_ft"]
    v = models_vit.VisionTransformer(global_pool=True, img_size=f["img_size"], patch_size=f["patch_size"],
        num_classes=f["num_classes"], embed_dim=f["embed_dim"], depth=f["depth"], num_heads=f["num_heads"],
        mlp_ratio=f["mlp_ratio"], qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=f["layer_norm_eps"])).eval()
    for blk in v.blocks:
        blk.attn.fused_attn = False
    sd = load("mae_official_finetuned.pth")["model"]
    v.load_state_dict(sd, strict=True)
    x = load_file(out / "mae_official_finetuned_io.safetensors")
    with torch.no_grad():
        pooled = v.forward_features(x["pixel_values"])
        cmp("mae_official_finetuned", dict(pooled=pooled, logits=v.head(pooled)))

for which in ["mae", "simmim", "swin", "unilm"]:  # unilm last: it re-registers timm model names
    if which in srcs:
        globals()["run_" + which](pathlib.Path(srcs[which]))
print(json.dumps(res))
'''


def official_cross_check(mirror):
    """Imports each official repository's own code from `mirror` (git mirrors) in a subprocess and
    recomputes the references from the saved files (strict load, official key order)."""
    repos = dict(mae="facebookresearch+mae", unilm="microsoft+unilm", simmim="microsoft+SimMIM", swin="microsoft+Swin-Transformer")
    paths = dict(mae=None, unilm="beit", simmim="models", swin="models")
    results, srcs, commits = {}, {}, {}
    owner = {}
    with tempfile.TemporaryDirectory() as tmp:
        for which, repo in repos.items():
            git_dir = pathlib.Path(mirror) / repo / "repo"
            if not git_dir.is_dir():
                results[repo] = "skipped (no mirror)"
                print(f"  {repo}: skipped (no mirror at {git_dir})")
                continue
            src = pathlib.Path(tmp) / which
            src.mkdir()
            archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD"] + ([paths[which]] if paths[which] else []),
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            commits[repo] = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], check=True,
                                           capture_output=True, text=True).stdout.strip()
            srcs[which] = str(src)
            owner[which] = repo
        if not srcs:
            return results
        cfg = dict(mae=MAE_CFG, mae_ft=MAE_FT_CFG, beit=BEIT_CFG, beit_ft=BEIT_FT_CFG, swin=SWIN_CFG,
                   swin_classes=SWIN_CLASSES, simmim_stride=SIMMIM_STRIDE)
        r = subprocess.run([sys.executable, "-c", OFFICIAL_SNIPPET, json.dumps(srcs), str(OUT), str(pathlib.Path(tmp) / "maepkg"),
                            json.dumps(cfg)], capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0:
            raise RuntimeError(f"official cross-check failed:\n{r.stderr[-3000:]}")
        diffs = json.loads(r.stdout.strip().splitlines()[-1])
    repo_of = dict(mae_official_visualize="mae", mae_official_train_checkpoint="mae", mae_official_finetuned="mae",
                   mae_official_pretrain="mae",
                   beit_official_pretrain="unilm", beit_official_finetuned="unilm", simmim_swin="simmim",
                   swin_official_finetuned="swin")
    for which, repo in owner.items():
        mine = {k: v for k, v in diffs.items() if repo_of[k] == which}
        assert mine and all(d <= 1e-5 for d in mine.values()), (repo, mine)
        results[repo] = dict(commit=commits[repo], max_abs_diff=mine)
        print(f"  {repo}@{commits[repo][:7]}: " + ", ".join(f"{k} {v:.1e}" for k, v in mine.items()))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", default="/work/.mirror", help="directory of official git mirrors for the cross-check")
    opts = parser.parse_args()
    torch.set_num_threads(1)  # thread-count-independent float sums
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    old = {}
    if (OUT / "manifest.json").exists():
        old = {f["path"]: f["sha256"] for f in json.loads((OUT / "manifest.json").read_text())["files"]}
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  timm {timm.__version__}  numpy {np.__version__}")
    print("attention spread:")
    fixture_mae_visualize()
    _, enc, x_enc, latent = fixture_mae_pretrain()
    fixture_mae_timm(enc, x_enc, latent)
    fixture_mae_finetuned()
    fixture_mae_hf()
    mask = fixture_beit_pretrain()
    fixture_beit_hf(mask)
    fixture_beit_finetuned()
    fixture_simmim()
    fixture_swin()
    fixture_swin_hf(simmim=False)
    fixture_swin_hf(simmim=True)
    print("hf config variants:")
    variants = hf_config_variants()
    table = verify()
    print("official code cross-check:")
    official = official_cross_check(opts.official)

    for entry in FIXTURES:
        pickled = [f for f in entry.get("files", [entry["file"]]) if f.endswith((".pth", ".bin"))]
        if pickled:
            entry["pickle"] = pickle_globals(OUT / pickled[0])
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "manifest.json")
    file_rows = [dict(path=str(p.relative_to(OUT)), bytes=p.stat().st_size, sha256=sha256(p)) for p in files]
    total = sum(r["bytes"] for r in file_rows)
    manifest = dict(
        generator="tools/make_published_fixtures.py", official_code="tools/official_code.py",
        versions=dict(python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__,
                      timm=timm.__version__, numpy=np.__version__, safetensors=safetensors.__version__,
                      yacs=importlib.metadata.version("yacs")),
        batch=BATCH, seeds=SEEDS, perturbation=SCALE, qk_gain=QK_GAIN, tolerance=TOL,
        conventions=dict(
            images="NCHW float32; the inputs are randn, i.e. already normalised (normalisation says what the official "
                   "transform would have applied to [0,1] pixels)",
            patches="row-major over the patch grid (index = row * grid_w + col)",
            masks="1 / True = masked (removed for MAE, replaced by the mask token for BEiT / SimMIM)",
            pth="torch.save zip archives (pickle protocol 2; records '<file stem>/data.pkl', '<stem>/data/<n>'); "
                "tensors are float32 unless noted (relative_position_index int64)"),
        fixtures=FIXTURES, hf_config_variants=variants, verification=table, official_cross_check=official,
        files=file_rows, total_bytes=total)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    total += (OUT / "manifest.json").stat().st_size
    print(f"\n{len(file_rows) + 1} files, {total} bytes ({total / 2**20:.2f} MiB) in {OUT.relative_to(TOOLS.parent)}")
    if old:
        same = [r["path"] for r in file_rows if old.get(r["path"]) == r["sha256"]]
        changed = [r["path"] for r in file_rows if r["path"] not in same]
        print(f"byte-identical to the previous manifest: {len(same)}/{len(file_rows)}" + (f"; changed: {changed}" if changed else ""))
    assert total < 3.5 * 2**20, "keep the fixture folder under 3.5 MB"


if __name__ == "__main__":
    main()
