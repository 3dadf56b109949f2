#!/usr/bin/env python3
"""Training-trajectory fixtures: each paper's official training recipe, 50+ optimizer steps, in PyTorch.

Purpose: the parity fixtures (make_{mae,beit,swin}_fixtures.py) pin one forward/backward pass. These pin
the training loop around it: parameter groups (which tensors are decayed, layer-wise lr scales), AdamW
betas / eps, the per-iteration learning-rate schedule with its warm-up and cosine (and each recipe's
off-by-ones), gradient accumulation, gradient clipping and the loss. Each case trains a tiny model for at
least 50 optimizer steps on fixed batches (the same N batches in the same order every epoch) and fixed
per-micro-step masks, recording what the optimizer actually used at every step. A Rust test replays the
same steps from `init.*` and compares the schedule, the losses, the gradient norms and `final.*`.

Cases (tests/fixtures/trajectory_<case>.safetensors, all described in tests/fixtures/trajectory.json):
    mae           facebookresearch/mae main_pretrain.py + engine_pretrain.py on the tiny HF ViTMAE of
                  make_mae_fixtures.py (16x16x3, patch 4, encoder 32x2, decoder 24x2), norm_pix_loss
    mae_accum2    the same recipe with accum_iter 2
    beit          microsoft/unilm beit/run_beit_pretraining.py + engine_for_pretraining.py on the tiny BEiT
                  (`shared` variant) of make_beit_fixtures.py; random token ids stand in for the dVAE
    simmim        microsoft/SimMIM main_simmim.py (ACCUMULATION_STEPS 0, AMP off) on the tiny timm Swin +
                  SimMIM wrapper of make_swin_fixtures.py
    mae_finetune  facebookresearch/mae main_finetune.py + engine_finetune.py: models_vit VisionTransformer
                  (global_pool, fc_norm) as MAE's encoder, layer-wise lr decay 0.75, label smoothing 0.1

The optimizer-group, schedule, clipping and mask-generator functions below are copied from the official
code (each says from which file and function). Licences: facebookresearch/mae is CC BY-NC 4.0 (Copyright
(c) Meta Platforms, Inc. and affiliates); microsoft/unilm (BEiT) and microsoft/SimMIM are MIT (Copyright
(c) Microsoft Corporation); timm is Apache-2.0 (Ross Wightman). The MAE code pins timm 0.3.2 and calls
its `optim_factory.add_weight_decay`, which is copied here from timm 0.3.2; SimMIM calls timm's
`CosineLRScheduler`, used here from the installed timm. Deliberate deviations, the same in every case:
float32 on CPU without autocast / GradScaler (the recipes' AMP only rescales the loss, and unscales before
the norm and the step), one process (no DDP), drop path 0, and fixed tensors instead of data loaders.

Run (venv setup in tools/README.md; about 40 seconds on one core):
    ~/.mim-peer-venv/bin/python tools/make_trajectory_fixtures.py

Writes tests/fixtures/trajectory_{mae,mae_accum2,beit,simmim,mae_finetune}.safetensors and
trajectory.json (about 2.4 MB in all), then reloads every file, rebuilds the model from `init.*`, replays
the recorded steps and checks that `final.*`, the losses, lrs and gradient norms come out identical; and
replays each case once more the way a Rust test would, from the file and trajectory.json alone (stored
lr / weight_decay per step, json groups, a hand-written AdamW and clip), to within 2e-5.
"""
import json
import math
import pathlib
import random
import sys
from functools import partial
from types import SimpleNamespace

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from timm.layers import PatchEmbed, trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy
from timm.models.vision_transformer import Block as VitBlock
from timm.scheduler import CosineLRScheduler

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import make_beit_fixtures as beit_fx  # noqa: E402
import make_mae_fixtures as mae_fx  # noqa: E402
import make_swin_fixtures as swin_fx  # noqa: E402

OUT = TOOLS.parent / "tests" / "fixtures"
inf = math.inf


# ------------------------------------------------------------------------------------------------------
# Official functions, copied (only `np.int` -> `int` and an explicit RNG instead of the global one).
# ------------------------------------------------------------------------------------------------------

def add_weight_decay(model, weight_decay=1e-5, skip_list=()):
    """timm 0.3.2 timm/optim/optim_factory.py `add_weight_decay` (Apache-2.0), called by MAE main_pretrain.py
    as `optim_factory.add_weight_decay(model_without_ddp, args.weight_decay)`: no skip list."""
    decay = []
    no_decay = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {'params': no_decay, 'weight_decay': 0.},
        {'params': decay, 'weight_decay': weight_decay}]


def adjust_learning_rate(optimizer, epoch, args):
    """facebookresearch/mae util/lr_sched.py `adjust_learning_rate` (CC BY-NC 4.0)."""
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.min_lr + (args.lr - args.min_lr) * 0.5 * \
            (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for param_group in optimizer.param_groups:
        if "lr_scale" in param_group:
            param_group["lr"] = lr * param_group["lr_scale"]
        else:
            param_group["lr"] = lr
    return lr


def get_grad_norm_(parameters, norm_type: float = 2.0) -> torch.Tensor:
    """facebookresearch/mae util/misc.py `get_grad_norm_` (identical in unilm beit/utils.py): the norm that
    NativeScalerWithGradNormCount returns when clip_grad is None."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    parameters = [p for p in parameters if p.grad is not None]
    norm_type = float(norm_type)
    if len(parameters) == 0:
        return torch.tensor(0.)
    device = parameters[0].grad.device
    if norm_type == inf:
        total_norm = max(p.grad.detach().abs().max().to(device) for p in parameters)
    else:
        total_norm = torch.norm(torch.stack([torch.norm(p.grad.detach(), norm_type).to(device) for p in parameters]), norm_type)
    return total_norm


def param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=[], layer_decay=.75):
    """facebookresearch/mae util/lr_decay.py `param_groups_lrd` (CC BY-NC 4.0); also returns the names."""
    param_group_names = {}
    param_groups = {}

    num_layers = len(model.blocks) + 1

    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))

    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue

        # no decay: all 1D parameters and model specific ones
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay = "no_decay"
            this_decay = 0.
        else:
            g_decay = "decay"
            this_decay = weight_decay

        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)

        if group_name not in param_group_names:
            this_scale = layer_scales[layer_id]

            param_group_names[group_name] = {
                "lr_scale": this_scale,
                "weight_decay": this_decay,
                "params": [],
            }
            param_groups[group_name] = {
                "lr_scale": this_scale,
                "weight_decay": this_decay,
                "params": [],
            }

        param_group_names[group_name]["params"].append(n)
        param_groups[group_name]["params"].append(p)

    return list(param_groups.values()), param_group_names


def get_layer_id_for_vit(name, num_layers):
    """facebookresearch/mae util/lr_decay.py `get_layer_id_for_vit`."""
    if name in ['cls_token', 'pos_embed']:
        return 0
    elif name.startswith('patch_embed'):
        return 0
    elif name.startswith('blocks'):
        return int(name.split('.')[1]) + 1
    else:
        return num_layers


def get_parameter_groups(model, weight_decay=1e-5, skip_list=(), get_num_layer=None, get_layer_scale=None):
    """microsoft/unilm beit/optim_factory.py `get_parameter_groups` (MIT); returns the names too instead of
    printing them."""
    parameter_group_names = {}
    parameter_group_vars = {}

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            group_name = "no_decay"
            this_weight_decay = 0.
        else:
            group_name = "decay"
            this_weight_decay = weight_decay
        if get_num_layer is not None:
            layer_id = get_num_layer(name)
            group_name = "layer_%d_%s" % (layer_id, group_name)
        else:
            layer_id = None

        if group_name not in parameter_group_names:
            if get_layer_scale is not None:
                scale = get_layer_scale(layer_id)
            else:
                scale = 1.

            parameter_group_names[group_name] = {
                "weight_decay": this_weight_decay,
                "params": [],
                "lr_scale": scale
            }
            parameter_group_vars[group_name] = {
                "weight_decay": this_weight_decay,
                "params": [],
                "lr_scale": scale
            }

        parameter_group_vars[group_name]["params"].append(param)
        parameter_group_names[group_name]["params"].append(name)
    return list(parameter_group_vars.values()), parameter_group_names


def beit_create_optimizer(args, model, skip_list=None):
    """microsoft/unilm beit/optim_factory.py `create_optimizer`, the adamw branch with filter_bias_and_bn
    (skip = model.no_weight_decay(); the groups carry the weight decay, the optimizer default becomes 0)."""
    weight_decay = args.weight_decay
    skip = {}
    if skip_list is not None:
        skip = skip_list
    elif hasattr(model, 'no_weight_decay'):
        skip = model.no_weight_decay()
    parameters, names = get_parameter_groups(model, weight_decay, skip, None, None)
    weight_decay = 0.
    opt_args = dict(lr=args.lr, weight_decay=weight_decay)
    if hasattr(args, 'opt_eps') and args.opt_eps is not None:
        opt_args['eps'] = args.opt_eps
    if hasattr(args, 'opt_betas') and args.opt_betas is not None:
        opt_args['betas'] = args.opt_betas
    return torch.optim.AdamW(parameters, **opt_args), names


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0, warmup_steps=-1):
    """microsoft/unilm beit/utils.py `cosine_scheduler` (MIT), minus its print."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array(
        [final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / (len(iters)))) for i in iters])

    schedule = np.concatenate((warmup_schedule, schedule))

    assert len(schedule) == epochs * niter_per_ep
    return schedule


class MaskingGenerator:
    """microsoft/unilm beit/masking_generator.py `MaskingGenerator` (MIT; originally Zhun Zhong & Liang
    Zheng's Random-Erasing, Apache 2.0, via Ross Wightman), with `random` replaced by an explicit
    `random.Random` and `np.int` (removed from numpy) by `int`."""

    def __init__(
            self, input_size, num_masking_patches, min_num_patches=4, max_num_patches=None,
            min_aspect=0.3, max_aspect=None, rng=random):
        if not isinstance(input_size, tuple):
            input_size = (input_size, ) * 2
        self.height, self.width = input_size

        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches

        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches

        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.rng = rng

    def get_shape(self):
        return self.height, self.width

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for attempt in range(10):
            target_area = self.rng.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(self.rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = self.rng.randint(0, self.height - h)
                left = self.rng.randint(0, self.width - w)

                num_masked = mask[top: top + h, left: left + w].sum()
                # Overlap
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1

                if delta > 0:
                    break
        return delta

    def __call__(self):
        mask = np.zeros(shape=self.get_shape(), dtype=int)
        mask_count = 0
        while mask_count < self.num_masking_patches:
            max_mask_patches = self.num_masking_patches - mask_count
            max_mask_patches = min(max_mask_patches, self.max_num_patches)

            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            else:
                mask_count += delta

        return mask


def check_keywords_in_name(name, keywords=()):
    """microsoft/SimMIM optimizer.py `check_keywords_in_name` (MIT)."""
    isin = False
    for keyword in keywords:
        if keyword in name:
            isin = True
    return isin


def get_pretrain_param_groups(model, skip_list=(), skip_keywords=()):
    """microsoft/SimMIM optimizer.py `get_pretrain_param_groups` (MIT); returns the names instead of logging."""
    has_decay = []
    no_decay = []
    has_decay_name = []
    no_decay_name = []

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias") or (name in skip_list) or \
                check_keywords_in_name(name, skip_keywords):
            no_decay.append(param)
            no_decay_name.append(name)
        else:
            has_decay.append(param)
            has_decay_name.append(name)
    return [{'params': has_decay},
            {'params': no_decay, 'weight_decay': 0.}], (has_decay_name, no_decay_name)


def simmim_no_weight_decay(model):
    """microsoft/SimMIM models/simmim.py `SimMIM.no_weight_decay`, with the encoder's own set as
    `SwinTransformerForSimMIM.no_weight_decay` = swin `no_weight_decay` ({'absolute_pos_embed'}) | {'mask_token'}."""
    encoder_no_weight_decay = {'absolute_pos_embed'} | {'mask_token'}
    return {'encoder.' + i for i in encoder_no_weight_decay}


def simmim_no_weight_decay_keywords(model):
    """microsoft/SimMIM models/simmim.py `SimMIM.no_weight_decay_keywords`, the encoder's set being
    models/swin_transformer.py `no_weight_decay_keywords` = {'relative_position_bias_table'}."""
    return {'encoder.' + i for i in {'relative_position_bias_table'}}


class SimMIMMaskGenerator:
    """microsoft/SimMIM data/data_simmim.py `MaskGenerator` (MIT) with an explicit np.random.RandomState."""

    def __init__(self, input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6, rng=np.random):
        self.input_size = input_size
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio

        assert self.input_size % self.mask_patch_size == 0
        assert self.mask_patch_size % self.model_patch_size == 0

        self.rand_size = self.input_size // self.mask_patch_size
        self.scale = self.mask_patch_size // self.model_patch_size

        self.token_count = self.rand_size ** 2
        self.mask_count = int(np.ceil(self.token_count * self.mask_ratio))
        self.rng = rng

    def __call__(self):
        mask_idx = self.rng.permutation(self.token_count)[:self.mask_count]
        mask = np.zeros(self.token_count, dtype=int)
        mask[mask_idx] = 1

        mask = mask.reshape((self.rand_size, self.rand_size))
        mask = mask.repeat(self.scale, axis=0).repeat(self.scale, axis=1)

        return mask


# ------------------------------------------------------------------------------------------------------
# MAE fine-tuning model: models_vit.VisionTransformer(global_pool=True) as it is on timm 0.3.2.
# ------------------------------------------------------------------------------------------------------

class MaeFinetuneViT(nn.Module):
    """facebookresearch/mae models_vit.py `VisionTransformer` with global_pool=True, written from timm
    pieces because models_vit subclasses timm 0.3.2's VisionTransformer, whose forward_head current timm
    changed. Same names and parameter order as there: the root's cls_token, pos_embed first, then
    patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, head, and fc_norm last
    (models_vit adds fc_norm after timm's __init__ and deletes the final norm). Forward: patch embed, cls
    token, + pos_embed, blocks, mean of the patch tokens (cls excluded), fc_norm, head. pos_embed is a
    trainable parameter (timm's), filled from MAE's checkpoint; dropout and drop path 0."""

    def __init__(self, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                 qkv_bias, layer_norm_eps, global_pool):
        super().__init__()
        assert global_pool
        norm_layer = partial(nn.LayerNorm, eps=layer_norm_eps)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([
            VitBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer)
            for _ in range(depth)])
        for blk in self.blocks:
            blk.attn.fused_attn = False  # timm 0.3.2's explicit softmax(q k^T * scale) v
        self.head = nn.Linear(embed_dim, num_classes)
        self.fc_norm = norm_layer(embed_dim)
        # timm 0.3.2 VisionTransformer init: trunc normal 0.02 for pos_embed, cls_token and Linear weights,
        # zero Linear biases, LayerNorm 1 / 0 (the conv keeps PyTorch's default).
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)

    def no_weight_decay(self):
        """timm 0.3.2 VisionTransformer.no_weight_decay."""
        return {'pos_embed', 'cls_token'}

    def forward(self, x):
        b = x.shape[0]
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = x[:, 1:, :].mean(dim=1)  # global pool without cls token
        return self.head(self.fc_norm(x))


# ------------------------------------------------------------------------------------------------------
# Recipes (the values the Rust test replays; all also written to trajectory.json).
# ------------------------------------------------------------------------------------------------------

PIXEL_NOISE = 0.5  # see smooth_images
SIMMIM_PIXEL_OFFSET = 8.0  # see simmim_data
SIMMIM_MIN_RESIDUAL = 0.1  # smallest |x_rec - x| on masked pixels that simmim_train accepts
WEIGHT_DECAY = 0.3  # larger than any recipe's 0.05, so a parameter decayed by mistake shows in final.*

MAE = dict(batch_size=4, iters_per_epoch=5, accum_iter=1, epochs=10, blr=0.064, min_lr=1e-4, warmup_epochs=2,
           weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95), eps=1e-8, mask_ratio=0.75, norm_pix_loss=True, clip_grad=None,
           seed=11)
MAE_ACCUM2 = dict(MAE, iters_per_epoch=4, accum_iter=2, epochs=25, seed=12)
BEIT = dict(batch_size=4, iters_per_epoch=5, epochs=10, lr=1.5e-3, min_lr=1e-4, warmup_epochs=2, warmup_steps=-1,
            warmup_lr=1e-6, weight_decay=WEIGHT_DECAY, weight_decay_end=WEIGHT_DECAY, opt_betas=(0.9, 0.999),
            opt_eps=1e-8, clip_grad=1.0, num_mask_patches=(4, 8), min_mask_patches_per_block=2,
            max_mask_patches_per_block=None, seed=13)
# SimMIM's config values before main_simmim.py's linear scaling (x batch * world_size / 512): with batch 4
# the absolute lr, warm-up lr and min lr are 1e-3, 1e-5, 1e-4.
SIMMIM = dict(batch_size=4, iters_per_epoch=5, epochs=10, warmup_epochs=2, base_lr=0.128, warmup_lr=1.28e-3,
              min_lr=1.28e-2, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8, clip_grad=0.6,
              accumulation_steps=0, mask_patch_size=8, mask_ratio=0.6, seed=14)
FINETUNE = dict(batch_size=4, iters_per_epoch=5, accum_iter=1, epochs=10, blr=0.064, min_lr=1e-4, warmup_epochs=2,
                weight_decay=WEIGHT_DECAY, layer_decay=0.75, smoothing=0.1, betas=(0.9, 0.999), eps=1e-8,
                clip_grad=None, mixup=0.0, cutmix=0.0, drop_path=0.0, seed=15)
FINETUNE_MODEL = dict(img_size=16, patch_size=4, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=4,
                      mlp_ratio=4.0, qkv_bias=True, layer_norm_eps=1e-6, global_pool=True)


def smooth_images(g, n, b, size, channels=3):
    """Images with spatial structure (so masked content is predictable from its neighbours and the losses can
    fall): randn on a size/4 grid, bilinearly upsampled, plus pixel noise. The noise keeps SimMIM's L1
    residuals away from 0: with 0.1 a residual occasionally changes sign under float noise, which flips
    sign(x_rec - x) in the gradient and (through Adam on the 1x1 decoder) moves final.* by ~3e-4; with 0.5
    a 1e-6 relative perturbation of every gradient at every step moves any case's final.* by at most ~1e-5."""
    low = torch.randn(n * b, channels, size // 4, size // 4, generator=g)
    up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (up + PIXEL_NOISE * torch.randn(up.shape, generator=g)).reshape(n, b, channels, size, size)


class Recorder:
    def __init__(self):
        self.loss, self.lr, self.wd, self.grad_norm = [], [], [], []

    def step(self, optimizer, norm):
        self.lr.append([float(g["lr"]) for g in optimizer.param_groups])
        self.wd.append([float(g["weight_decay"]) for g in optimizer.param_groups])
        self.grad_norm.append(float(norm))

    def tensors(self):
        return {"loss": torch.tensor(self.loss, dtype=torch.float32),
                "lr": torch.tensor(self.lr, dtype=torch.float64),
                "weight_decay": torch.tensor(self.wd, dtype=torch.float64),
                "grad_norm": torch.tensor(self.grad_norm, dtype=torch.float32)}


def names_of(model, params):
    ids = {id(p): n for n, p in model.named_parameters()}
    return [ids[id(p)] for p in params]


def groups_json(groups):
    """[(name, group dict, [param names])] -> [{name, weight_decay, lr_scale, params}] in optimizer (= column) order."""
    return [{"name": n, "weight_decay": float(g["weight_decay"]), "lr_scale": float(g.get("lr_scale", 1.0)), "params": p}
            for n, g, p in groups]


# ------------------------------------------------------------------------------------------------------
# MAE pre-training: main_pretrain.py + engine_pretrain.py
# ------------------------------------------------------------------------------------------------------

def mae_build():
    model, _, _ = mae_fx.build()  # make_mae_fixtures' tiny ViTMAE: sin-cos position embeddings, perturbed
    return model.train()


def mae_load(weights):
    model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**mae_fx.CONFIG)).float()
    model.load_state_dict(weights, strict=True)
    return model.train()


def mae_data(r):
    g = torch.Generator().manual_seed(r["seed"])
    n, b = r["iters_per_epoch"], r["batch_size"]
    grid = mae_fx.CONFIG["image_size"] // mae_fx.CONFIG["patch_size"]
    images = smooth_images(g, n, b, 16)
    noise = torch.rand(r["epochs"] * n, b, grid * grid, generator=g)  # one per micro-step: HF random_masking noise
    return {"images": images, "noise": noise}


def mae_optimizer(model, r):
    """main_pretrain.py: lr = blr * eff_batch / 256; add_weight_decay (no skip list); AdamW betas (0.9, 0.95)."""
    eff_batch_size = r["batch_size"] * r["accum_iter"] * 1  # world size 1
    lr = r["blr"] * eff_batch_size / 256
    param_groups = add_weight_decay(model, r["weight_decay"])
    optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.95))
    names = [("no_decay", param_groups[0], names_of(model, param_groups[0]["params"])),
             ("decay", param_groups[1], names_of(model, param_groups[1]["params"]))]
    return optimizer, lr, names


def mae_train(model, data, r):
    optimizer, lr, names = mae_optimizer(model, r)
    args = SimpleNamespace(lr=lr, min_lr=r["min_lr"], warmup_epochs=r["warmup_epochs"], epochs=r["epochs"])
    rec, accum_iter, n, s = Recorder(), r["accum_iter"], r["iters_per_epoch"], 0
    for epoch in range(r["epochs"]):
        # engine_pretrain.py train_one_epoch
        optimizer.zero_grad()
        for data_iter_step in range(n):
            # we use a per iteration (instead of per epoch) lr scheduler
            if data_iter_step % accum_iter == 0:
                adjust_learning_rate(optimizer, data_iter_step / n + epoch, args)
            samples = data["images"][data_iter_step]
            loss = model(pixel_values=samples, noise=data["noise"][s]).loss
            rec.loss.append(loss.item())
            s += 1
            loss /= accum_iter
            # NativeScalerWithGradNormCount.__call__(loss, optimizer, parameters=model.parameters(),
            #   update_grad=(data_iter_step + 1) % accum_iter == 0), without AMP: clip_grad is None
            loss.backward()
            if (data_iter_step + 1) % accum_iter == 0:
                norm = get_grad_norm_(model.parameters())
                rec.step(optimizer, norm)
                optimizer.step()
            if (data_iter_step + 1) % accum_iter == 0:
                optimizer.zero_grad()
    return rec, dict(lr=lr, groups=groups_json(names))


def mae_meta(r, extra):
    eff = r["batch_size"] * r["accum_iter"]
    return dict(
        model=dict(mae_fx.CONFIG), model_family="hf_vit_mae (names as mae_tiny_weights.safetensors)",
        hyper=dict(r, lr=extra["lr"], eff_batch_size=eff, micro_steps=r["epochs"] * r["iters_per_epoch"],
                   optimizer_steps=r["epochs"] * r["iters_per_epoch"] // r["accum_iter"], world_size=1),
        groups=extra["groups"],
        follows={
            "lr": "main_pretrain.py: args.lr = args.blr * eff_batch_size / 256, eff_batch_size = batch_size * accum_iter * world_size",
            "param_groups": "main_pretrain.py `optim_factory.add_weight_decay(model, args.weight_decay)` = timm 0.3.2 "
                            "timm/optim/optim_factory.py add_weight_decay, skip_list=(): no decay iff ndim == 1 or name "
                            "endswith '.bias'; frozen parameters (requires_grad False) are left out",
            "optimizer": "main_pretrain.py torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95)), eps default 1e-8",
            "schedule": "engine_pretrain.py train_one_epoch: util/lr_sched.py adjust_learning_rate(optimizer, "
                        "data_iter_step / len(data_loader) + epoch, args) when data_iter_step % accum_iter == 0",
            "step": "engine_pretrain.py: loss /= accum_iter; util/misc.py NativeScalerWithGradNormCount with "
                    "clip_grad None (get_grad_norm_, no clipping) and update_grad=(data_iter_step + 1) % accum_iter == 0; "
                    "optimizer.zero_grad() at the epoch start and after each update",
            "loss": "HF ViTMAEForPreTraining (= models_mae forward_loss) with norm_pix_loss: per-patch mean and unbiased "
                    "variance, (target - mean) / sqrt(var + 1e-6), mean squared error per patch, mean over masked patches",
            "masking": "HF random_masking with noise=noise[s]: ids_shuffle = argsort(noise), keep the first "
                       "int(L * (1 - mask_ratio))",
        },
        quirks=[
            "the warm-up starts at exactly 0: optimizer step 0 runs with lr 0 (AdamW still counts the step and "
            "updates both moments, so bias correction uses step numbers from 1 at step 0)",
            "lr is a function of the fractional epoch data_iter_step / iters_per_epoch + epoch, evaluated at the "
            "first micro-step of each accumulation window; warmup_epochs is an int",
            "cls_token and mask_token are 3-D ([1,1,D]), so add_weight_decay decays them (no skip list is passed); "
            "the sin-cos position embeddings are frozen and in no group",
            "the AdamW default weight_decay (0.01) is unused: both groups carry their own",
            "the cosine's t reaches (epochs - warmup)/(epochs - warmup) only after the last step: the last lr is above min_lr",
        ],
    )


# ------------------------------------------------------------------------------------------------------
# BEiT pre-training: run_beit_pretraining.py + engine_for_pretraining.py
# ------------------------------------------------------------------------------------------------------

BEIT_CFG = beit_fx.VARIANTS["shared"]
BEIT_GRID = BEIT_CFG["img_size"] // BEIT_CFG["patch_size"]


def beit_no_weight_decay(model):
    """unilm beit/modeling_pretrain.py VisionTransformerForMaskedImageModeling.no_weight_decay."""
    return {'pos_embed', 'cls_token'}


def beit_build():
    model, _, _, _ = beit_fx.build(BEIT_CFG)  # make_beit_fixtures' `shared` variant, perturbed
    return model.train()


def beit_load(weights):
    model = beit_fx.BeitForMaskedImageModeling(**BEIT_CFG).float()
    for k in [k for k in weights if k.endswith("relative_position_index")]:
        weights.pop(k)
    model.load_state_dict(weights, strict=True)
    return model.train()


def beit_state_dict(model):
    return beit_fx.official_state_dict(model, (BEIT_GRID, BEIT_GRID))


def beit_data(r):
    g = torch.Generator().manual_seed(r["seed"])
    rng = random.Random(r["seed"])
    n, b = r["iters_per_epoch"], r["batch_size"]
    images = smooth_images(g, n, b, 16)
    # A frozen stand-in for the dVAE tokenizer: each patch's id is the argmax of a fixed random projection of
    # its pixels, so the targets depend on the image (and masked ones on the visible neighbours).
    p = BEIT_CFG["patch_size"]
    patches = images.reshape(n, b, 3, BEIT_GRID, p, BEIT_GRID, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(n, b, BEIT_GRID ** 2, -1)
    token_ids = (patches @ torch.randn(patches.shape[-1], BEIT_CFG["vocab_size"], generator=g)).argmax(-1)
    lo, hi = r["num_mask_patches"]
    masks = []
    for _ in range(r["epochs"] * n):
        for _ in range(b):
            gen = MaskingGenerator(BEIT_GRID, num_masking_patches=rng.randint(lo, hi),
                                   max_num_patches=r["max_mask_patches_per_block"],
                                   min_num_patches=r["min_mask_patches_per_block"], rng=rng)
            m = gen()
            assert m.sum() > 0
            masks.append(torch.from_numpy(m.reshape(-1)).float())
    mask = torch.stack(masks).reshape(r["epochs"] * n, b, BEIT_GRID * BEIT_GRID)
    return {"images": images, "bool_masked_pos": mask, "token_ids": token_ids.to(torch.int64)}


def beit_train(model, data, r):
    args = SimpleNamespace(lr=r["lr"], weight_decay=r["weight_decay"], opt_eps=r["opt_eps"], opt_betas=list(r["opt_betas"]))
    optimizer, names = beit_create_optimizer(args, model, skip_list=beit_no_weight_decay(model))
    n = r["iters_per_epoch"]
    num_training_steps_per_epoch = n
    lr_schedule_values = cosine_scheduler(
        r["lr"], r["min_lr"], r["epochs"], num_training_steps_per_epoch,
        warmup_epochs=r["warmup_epochs"], warmup_steps=r["warmup_steps"],
    )
    wd_schedule_values = cosine_scheduler(
        r["weight_decay"], r["weight_decay_end"], r["epochs"], num_training_steps_per_epoch)
    rec = Recorder()
    for epoch in range(r["epochs"]):
        start_steps = epoch * num_training_steps_per_epoch
        # engine_for_pretraining.py train_one_epoch
        for step in range(n):
            # assign learning rate & weight decay for each step
            it = start_steps + step  # global training iteration
            for i, param_group in enumerate(optimizer.param_groups):
                param_group["lr"] = lr_schedule_values[it] * param_group["lr_scale"]
                if param_group["weight_decay"] > 0:
                    param_group["weight_decay"] = wd_schedule_values[it]
            samples = data["images"][step]
            bool_masked_pos = data["bool_masked_pos"][it].to(torch.bool)
            labels = data["token_ids"][step][bool_masked_pos]
            outputs = model(samples, bool_masked_pos)  # return_all_tokens=False: lm_head on masked positions
            loss = nn.CrossEntropyLoss()(input=outputs, target=labels)
            rec.loss.append(loss.item())
            optimizer.zero_grad()
            # utils.NativeScalerWithGradNormCount(loss, optimizer, clip_grad=max_norm, parameters=model.parameters()),
            # without AMP: backward, clip_grad_norm_ (returns the norm before clipping), step
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip_grad"])
            rec.step(optimizer, norm)
            optimizer.step()
    groups = [(k, names[k], names[k]["params"]) for k in names]
    return rec, dict(groups=groups_json(groups), lr_schedule=lr_schedule_values.tolist())


def beit_meta(r, extra):
    return dict(
        model=dict(BEIT_CFG, drop_path=0.0), model_family="unilm beit (names as beit_tiny_shared_weights.safetensors)",
        hyper=dict(r, optimizer_steps=r["epochs"] * r["iters_per_epoch"], micro_steps=r["epochs"] * r["iters_per_epoch"],
                   accum_iter=1, start_warmup_value=0.0, warmup_iters=r["warmup_epochs"] * r["iters_per_epoch"],
                   world_size=1, vocab_size=BEIT_CFG["vocab_size"]),
        groups=extra["groups"],
        follows={
            "param_groups": "beit/optim_factory.py create_optimizer -> get_parameter_groups(model, weight_decay, skip, "
                            "None, None), skip = model.no_weight_decay() = {'pos_embed', 'cls_token'} "
                            "(modeling_pretrain.py): no decay iff ndim == 1 or name endswith '.bias' or in skip; "
                            "groups in first-seen order of named_parameters; lr_scale 1",
            "optimizer": "create_optimizer: torch.optim.AdamW(groups, lr=args.lr, weight_decay=0., eps=args.opt_eps "
                         "(1e-8), betas=args.opt_betas (default [0.9, 0.999]))",
            "schedule": "run_beit_pretraining.py: lr_schedule_values = utils.cosine_scheduler(lr, min_lr, epochs, "
                        "niter_per_ep, warmup_epochs, warmup_steps); wd_schedule_values = cosine_scheduler(weight_decay, "
                        "weight_decay_end = weight_decay, epochs, niter_per_ep) (constant); engine_for_pretraining.py "
                        "sets lr = lr_schedule_values[it] * lr_scale for every group and weight_decay = "
                        "wd_schedule_values[it] for groups with weight_decay > 0, it = epoch * niter_per_ep + step, "
                        "before the forward",
            "step": "engine_for_pretraining.py: optimizer.zero_grad(); utils.NativeScalerWithGradNormCount with "
                    "clip_grad=args.clip_grad: backward, torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad) "
                    "(clip coefficient clip_grad / (norm + 1e-6) when below 1), optimizer.step()",
            "loss": "nn.CrossEntropyLoss()(model(samples, bool_masked_pos), input_ids[bool_masked_pos]): mean over all "
                    "masked patches of the batch (images with more masked patches weigh more)",
            "masks": "beit/masking_generator.py MaskingGenerator(window 4x4, num_masking_patches drawn per image from "
                     "num_mask_patches, min_num_patches=min_mask_patches_per_block), seeded random.Random",
            "token_ids": "fixed randint(0, vocab) per batch, a stand-in for the frozen dVAE's get_codebook_indices",
        },
        quirks=[
            "cosine_scheduler warms up with np.linspace(0, lr, warmup_iters): the first step has lr 0 and the last "
            "warm-up step already has the peak lr, and the cosine part starts at the peak again (i = 0), so the peak "
            "is used twice; --warmup_lr is parsed but never used by pre-training",
            "the cosine part is final + 0.5 (base - final)(1 + cos(pi i / len(iters))), i < len(iters): it never "
            "reaches min_lr",
            "mask_token ([1,1,D]) and rel_pos_bias.relative_position_bias_table (2-D) are not in no_weight_decay(): "
            "both are decayed; gamma_1/gamma_2 (layer scale), q_bias/v_bias and norms are 1-D: not decayed",
            "weight decay goes through the schedule only for groups whose weight_decay > 0",
            "grad_norm is the norm before clipping, over every parameter with a gradient",
        ],
    )


# ------------------------------------------------------------------------------------------------------
# SimMIM pre-training: main_simmim.py
# ------------------------------------------------------------------------------------------------------

SWIN_CFG = swin_fx.CONFIG


def simmim_build():
    _, simmim, _, _, _ = swin_fx.build()  # make_swin_fixtures' tiny Swin + official SimMIM wrapper, perturbed
    return simmim.train()


def simmim_load(weights):
    from timm.models.swin_transformer import SwinTransformer
    model = swin_fx.SimMIM(SwinTransformer(**dict(SWIN_CFG, num_classes=0)).float(), swin_fx.STRIDE).float()
    model.load_state_dict(weights, strict=True)
    return model.train()


def simmim_data(r):
    g = torch.Generator().manual_seed(r["seed"])
    rng = np.random.RandomState(r["seed"])
    n, b, size = r["iters_per_epoch"], r["batch_size"], SWIN_CFG["img_size"]
    # Offset far from what the decoder outputs, so no masked residual x_rec - x comes near the L1 kink
    # (simmim_train asserts the margin): at a residual within float noise of 0, sign(x_rec - x) flips
    # between implementations, which moved the run's gradient norm by 1e-3 at one step with centred images.
    images = smooth_images(g, n, b, size) + SIMMIM_PIXEL_OFFSET
    gen = SimMIMMaskGenerator(input_size=size, mask_patch_size=r["mask_patch_size"],
                              model_patch_size=SWIN_CFG["patch_size"], mask_ratio=r["mask_ratio"], rng=rng)
    masks = torch.stack([torch.from_numpy(gen()).float() for _ in range(r["epochs"] * n * b)])
    grid = size // SWIN_CFG["patch_size"]
    return {"images": images, "mask": masks.reshape(r["epochs"] * n, b, grid * grid)}


def simmim_schedule(r):
    """main_simmim.py's linear lr scaling (world size 1, ACCUMULATION_STEPS 0) and lr_scheduler.py build_scheduler."""
    scale = r["batch_size"] * 1 / 512.0
    return dict(lr=r["base_lr"] * scale, warmup_lr=r["warmup_lr"] * scale, min_lr=r["min_lr"] * scale,
                num_steps=int(r["epochs"] * r["iters_per_epoch"]), warmup_steps=int(r["warmup_epochs"] * r["iters_per_epoch"]))


def simmim_train(model, data, r):
    sch = simmim_schedule(r)
    skip, skip_keywords = simmim_no_weight_decay(model), simmim_no_weight_decay_keywords(model)
    parameters, (has_decay_name, no_decay_name) = get_pretrain_param_groups(model, skip, skip_keywords)
    # optimizer.py build_pretrain_optimizer, adamw branch
    optimizer = torch.optim.AdamW(parameters, eps=r["eps"], betas=r["betas"], lr=sch["lr"], weight_decay=r["weight_decay"])
    # lr_scheduler.py build_scheduler, 'cosine': SimMIM passes t_mul=1., which timm >= 0.9 renamed cycle_mul
    lr_scheduler = CosineLRScheduler(
        optimizer,
        t_initial=sch["num_steps"],
        cycle_mul=1.,
        lr_min=sch["min_lr"],
        warmup_lr_init=sch["warmup_lr"],
        warmup_t=sch["warmup_steps"],
        cycle_limit=1,
        t_in_epochs=False,
    )
    rec, num_steps = Recorder(), r["iters_per_epoch"]
    margin = float("inf")
    for epoch in range(r["epochs"]):
        # main_simmim.py train_one_epoch, the ACCUMULATION_STEPS <= 1 branch without AMP
        optimizer.zero_grad()
        for idx in range(num_steps):
            img = data["images"][idx]
            grid = SWIN_CFG["img_size"] // SWIN_CFG["patch_size"]
            mask = data["mask"][epoch * num_steps + idx].reshape(-1, grid, grid)
            loss, x_rec = model(img, mask)
            pixels = mask.repeat_interleave(SWIN_CFG["patch_size"], 1).repeat_interleave(SWIN_CFG["patch_size"], 2)
            margin = min(margin, (x_rec - img).abs().permute(1, 0, 2, 3)[:, pixels.bool()].min().item())
            rec.loss.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip_grad"])
            rec.step(optimizer, grad_norm)
            optimizer.step()
            lr_scheduler.step_update(epoch * num_steps + idx)
    assert margin >= SIMMIM_MIN_RESIDUAL, f"a masked L1 residual came within {margin} of the kink"
    groups = [("has_decay", {"weight_decay": r["weight_decay"]}, has_decay_name),
              ("no_decay", {"weight_decay": 0.0}, no_decay_name)]
    return rec, dict(groups=groups_json(groups), schedule=sch, skip=sorted(skip), skip_keywords=sorted(skip_keywords),
                     pixel_offset=SIMMIM_PIXEL_OFFSET, min_l1_residual=margin)


def simmim_meta(r, extra):
    sch = extra["schedule"]
    return dict(
        model=dict(SWIN_CFG, num_classes=0, encoder_stride=swin_fx.STRIDE, mask_patch_size=r["mask_patch_size"],
                   mask_ratio=r["mask_ratio"]),
        model_family="timm SwinTransformer + official SimMIM wrapper (names as swin_tiny_simmim.safetensors)",
        hyper=dict(r, lr=sch["lr"], warmup_lr_abs=sch["warmup_lr"], min_lr_abs=sch["min_lr"], num_steps=sch["num_steps"],
                   warmup_steps=sch["warmup_steps"], optimizer_steps=sch["num_steps"], micro_steps=sch["num_steps"],
                   world_size=1, no_weight_decay=extra["skip"], no_weight_decay_keywords=extra["skip_keywords"],
                   pixel_offset=extra["pixel_offset"], min_l1_residual=extra["min_l1_residual"]),
        groups=extra["groups"],
        follows={
            "lr": "main_simmim.py: BASE_LR, WARMUP_LR and MIN_LR are each multiplied by batch_size * world_size / 512 "
                  "(and by ACCUMULATION_STEPS when > 1); hyper.base_lr/warmup_lr/min_lr are the config values, "
                  "hyper.lr/warmup_lr_abs/min_lr_abs the scaled ones the scheduler gets",
            "param_groups": "optimizer.py build_pretrain_optimizer -> get_pretrain_param_groups(model, skip, "
                            "skip_keywords), skip = SimMIM.no_weight_decay() = {'encoder.' + i for i in "
                            "encoder.no_weight_decay()} = {'encoder.absolute_pos_embed', 'encoder.mask_token'}, "
                            "skip_keywords = SimMIM.no_weight_decay_keywords() = {'encoder.relative_position_bias_table'}; "
                            "no decay iff ndim == 1 or name endswith '.bias' or name in skip or a keyword is a substring "
                            "of the name; returns [{'params': has_decay}, {'params': no_decay, 'weight_decay': 0.}] "
                            "(decay group FIRST)",
            "optimizer": "build_pretrain_optimizer: optim.AdamW(groups, eps=1e-8, betas=(0.9, 0.999), lr=BASE_LR, "
                         "weight_decay=WEIGHT_DECAY) (the decay group takes the optimizer default)",
            "schedule": "lr_scheduler.py build_scheduler 'cosine': timm CosineLRScheduler(t_initial=num_steps, "
                        "t_mul=1., lr_min=MIN_LR, warmup_lr_init=WARMUP_LR, warmup_t=warmup_steps, cycle_limit=1, "
                        "t_in_epochs=False), num_steps = EPOCHS * iters_per_epoch, warmup_steps = WARMUP_EPOCHS * "
                        "iters_per_epoch; main_simmim.py calls lr_scheduler.step_update(epoch * num_steps + idx) AFTER "
                        "optimizer.step()",
            "step": "main_simmim.py train_one_epoch (ACCUMULATION_STEPS 0, AMP off): optimizer.zero_grad(); "
                    "loss.backward(); grad_norm = clip_grad_norm_(model.parameters(), CLIP_GRAD); optimizer.step(); "
                    "lr_scheduler.step_update(epoch * num_steps + idx)",
            "loss": "models/simmim.py SimMIM.forward: mask upsampled by repeat_interleave(patch_size) on both axes, "
                    "L1 per pixel, (loss * mask).sum() / (mask.sum() + 1e-5) / in_chans",
            "masks": "data/data_simmim.py MaskGenerator(input_size 32, mask_patch_size 8, model_patch_size 2, "
                     "mask_ratio 0.6): ceil(16 * 0.6) = 10 of 16 mask patches, repeated 4x4 onto the 16x16 model "
                     "patch grid, seeded np.random.RandomState",
        },
        quirks=[
            "SimMIM.no_weight_decay_keywords prefixes 'encoder.': the keyword 'encoder.relative_position_bias_table' "
            "is not a substring of 'encoder.layers.N.blocks.M.attn.relative_position_bias_table', so every relative "
            "position bias table is DECAYED (2-D); encoder.mask_token is in skip (exact name) and is not decayed",
            "the lr applied at optimizer step k is schedule(k - 1) for k >= 1 and warmup_lr (set by the scheduler's "
            "constructor) at k = 0, i.e. steps 0 and 1 both use warmup_lr, and schedule(num_steps - 1) is never used",
            "timm's warm-up is warmup_lr + t (lr - warmup_lr) / warmup_t for t < warmup_t (its last value, t = "
            "warmup_t - 1, is still below lr); with warmup_prefix False the cosine runs over the whole t in "
            "[0, t_initial), so from t = warmup_t it is min + 0.5 (lr - min)(1 + cos(pi t / t_initial)), i.e. it starts "
            "part-way down the cosine: the lr never reaches the scaled BASE_LR (here 9.01e-4 at the end of the "
            "warm-up, then 9.14e-4, then decreasing)",
            "timm >= 0.9 renamed CosineLRScheduler's t_mul to cycle_mul (SimMIM's call passes t_mul=1.); the formula "
            "for cycle_mul 1, cycle_limit 1, k_decay 1 is the same as in timm 0.3.2 (checked; SimMIM pins no version)",
            "grad_norm is the norm before clipping (clip_grad_norm_'s return value)",
            "not the official code but worth knowing for a replay: the L1 gradient is sign(x_rec - x) / count; a "
            "residual that changes sign under float noise changes it discontinuously and Adam amplifies that in the "
            "decoder, so the images are offset by SIMMIM_PIXEL_OFFSET and the generator asserts that no masked residual "
            "comes within SIMMIM_MIN_RESIDUAL of 0",
        ],
    )


# ------------------------------------------------------------------------------------------------------
# MAE fine-tuning: main_finetune.py + engine_finetune.py
# ------------------------------------------------------------------------------------------------------

def finetune_build():
    torch.manual_seed(FINETUNE["seed"])
    model = MaeFinetuneViT(**FINETUNE_MODEL).float()
    grid = FINETUNE_MODEL["img_size"] // FINETUNE_MODEL["patch_size"]
    with torch.no_grad():
        # A "pre-trained" checkpoint: MAE's fixed 2-D sin-cos position embedding (util/pos_embed.py, cls row 0),
        # then every parameter perturbed so nothing is at a symmetric value. main_finetune.py then re-draws the
        # head: trunc_normal_(model.head.weight, std=2e-5); we perturb it too so gradients reach the blocks at once.
        model.pos_embed.copy_(torch.from_numpy(mae_fx.official_sincos(FINETUNE_MODEL["embed_dim"], grid)).float().unsqueeze(0))
        trunc_normal_(model.head.weight, std=2e-5)
        for name, p in model.named_parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.train()


def finetune_load(weights):
    model = MaeFinetuneViT(**FINETUNE_MODEL).float()
    model.load_state_dict(weights, strict=True)
    return model.train()


def finetune_data(r):
    g = torch.Generator().manual_seed(r["seed"] + 100)
    n, b = r["iters_per_epoch"], r["batch_size"]
    # Learnable labels: each image is a class prototype plus its own structure.
    labels = torch.randint(0, FINETUNE_MODEL["num_classes"], (n, b), generator=g)
    prototypes = smooth_images(g, FINETUNE_MODEL["num_classes"], 1, 16)[:, 0]
    images = prototypes[labels] + smooth_images(g, n, b, 16)
    return {"images": images, "labels": labels.to(torch.int64)}


def finetune_train(model, data, r):
    eff_batch_size = r["batch_size"] * r["accum_iter"] * 1
    lr = r["blr"] * eff_batch_size / 256
    # build optimizer with layer-wise lr decay (lrd)
    param_groups, group_names = param_groups_lrd(model, r["weight_decay"], no_weight_decay_list=model.no_weight_decay(),
                                                 layer_decay=r["layer_decay"])
    optimizer = torch.optim.AdamW(param_groups, lr=lr)
    criterion = LabelSmoothingCrossEntropy(smoothing=r["smoothing"])  # mixup off, smoothing > 0
    args = SimpleNamespace(lr=lr, min_lr=r["min_lr"], warmup_epochs=r["warmup_epochs"], epochs=r["epochs"])
    rec, accum_iter, n = Recorder(), r["accum_iter"], r["iters_per_epoch"]
    for epoch in range(r["epochs"]):
        # engine_finetune.py train_one_epoch
        optimizer.zero_grad()
        for data_iter_step in range(n):
            if data_iter_step % accum_iter == 0:
                adjust_learning_rate(optimizer, data_iter_step / n + epoch, args)
            samples, targets = data["images"][data_iter_step], data["labels"][data_iter_step]
            outputs = model(samples)
            loss = criterion(outputs, targets)
            rec.loss.append(loss.item())
            loss /= accum_iter
            # NativeScalerWithGradNormCount with clip_grad=args.clip_grad=None: get_grad_norm_, no clipping
            loss.backward()
            if (data_iter_step + 1) % accum_iter == 0:
                norm = get_grad_norm_(model.parameters())
                rec.step(optimizer, norm)
                optimizer.step()
            if (data_iter_step + 1) % accum_iter == 0:
                optimizer.zero_grad()
    groups = [(k, v, v["params"]) for k, v in group_names.items()]
    return rec, dict(lr=lr, groups=groups_json(groups))


def finetune_meta(r, extra):
    return dict(
        model=dict(FINETUNE_MODEL, drop_path=0.0), model_family="mae models_vit VisionTransformer(global_pool=True), "
                                                               "official/timm names",
        hyper=dict(r, lr=extra["lr"], eff_batch_size=r["batch_size"] * r["accum_iter"], world_size=1,
                   optimizer_steps=r["epochs"] * r["iters_per_epoch"], micro_steps=r["epochs"] * r["iters_per_epoch"],
                   num_classes=FINETUNE_MODEL["num_classes"],
                   layer_scales=[r["layer_decay"] ** (FINETUNE_MODEL["depth"] + 1 - i) for i in range(FINETUNE_MODEL["depth"] + 2)]),
        groups=extra["groups"],
        follows={
            "lr": "main_finetune.py: args.lr = args.blr * eff_batch_size / 256",
            "param_groups": "util/lr_decay.py param_groups_lrd(model, weight_decay, no_weight_decay_list="
                            "model.no_weight_decay() = {'pos_embed', 'cls_token'} (timm 0.3.2 VisionTransformer), "
                            "layer_decay): no decay iff p.ndim == 1 or name in the list (no '.bias' rule); "
                            "num_layers = len(blocks) + 1, layer_scales[i] = layer_decay ** (num_layers - i); "
                            "get_layer_id_for_vit: cls_token, pos_embed, patch_embed.* -> 0, blocks.N.* -> N + 1, "
                            "everything else (fc_norm, head) -> num_layers; groups 'layer_%d_%s' in first-seen order",
            "optimizer": "main_finetune.py torch.optim.AdamW(param_groups, lr=args.lr): default betas (0.9, 0.999), eps 1e-8",
            "schedule": "engine_finetune.py: util/lr_sched.py adjust_learning_rate(optimizer, data_iter_step / "
                        "len(data_loader) + epoch, args) sets lr * lr_scale per group",
            "step": "engine_finetune.py with mixup_fn None: loss /= accum_iter; NativeScalerWithGradNormCount(clip_grad="
                    "args.clip_grad=None): get_grad_norm_, no clipping",
            "loss": "main_finetune.py: mixup off and smoothing > 0 -> timm LabelSmoothingCrossEntropy(smoothing): "
                    "mean over the batch of (1 - s) * nll + s * mean_c(-log_softmax)",
            "model": "models_vit.py VisionTransformer(global_pool=True): mean of patch tokens (no cls), fc_norm, head; "
                     "no final norm; qkv_bias True, LayerNorm eps 1e-6",
        },
        quirks=[
            "fc_norm is registered after head (models_vit adds it after timm 0.3.2's __init__), so named_parameters "
            "ends head.weight, head.bias, fc_norm.*; the group order is therefore layer_3_decay before layer_3_no_decay",
            "cls_token and pos_embed are in layer 0 with lr_scale layer_decay ** (depth + 1) and are not decayed; "
            "pos_embed is trainable in fine-tuning (frozen sin-cos in pre-training)",
            "the warm-up starts at lr 0 (step 0 has lr 0 in every group)",
            "the AdamW default weight_decay (0.01) is unused: every group carries its own",
        ],
    )


# ------------------------------------------------------------------------------------------------------

def mae_micro_loss(model, t, s, n):
    return model(pixel_values=t["images"][n], noise=t["noise"][s]).loss


def beit_micro_loss(model, t, s, n):
    m = t["bool_masked_pos"][s].bool()
    return F.cross_entropy(model(t["images"][n], m), t["token_ids"][n][m])


def simmim_micro_loss(model, t, s, n):
    grid = SWIN_CFG["img_size"] // SWIN_CFG["patch_size"]
    return model(t["images"][n], t["mask"][s].reshape(-1, grid, grid))[0]


def finetune_micro_loss(model, t, s, n):
    logp = model(t["images"][n]).log_softmax(-1)
    y, eps = t["labels"][n], FINETUNE["smoothing"]
    return ((1 - eps) * -logp.gather(1, y[:, None])[:, 0] + eps * -logp.mean(-1)).mean()


CASES = {
    "mae": dict(recipe=MAE, build=mae_build, load=mae_load, data=mae_data, train=mae_train, meta=mae_meta,
                micro_loss=mae_micro_loss),
    "mae_accum2": dict(recipe=MAE_ACCUM2, build=mae_build, load=mae_load, data=mae_data, train=mae_train, meta=mae_meta,
                       micro_loss=mae_micro_loss),
    "beit": dict(recipe=BEIT, build=beit_build, load=beit_load, data=beit_data, train=beit_train, meta=beit_meta,
                 state_dict=beit_state_dict, micro_loss=beit_micro_loss),
    "simmim": dict(recipe=SIMMIM, build=simmim_build, load=simmim_load, data=simmim_data, train=simmim_train,
                   meta=simmim_meta, micro_loss=simmim_micro_loss),
    "mae_finetune": dict(recipe=FINETUNE, build=finetune_build, load=finetune_load, data=finetune_data,
                         train=finetune_train, meta=finetune_meta, micro_loss=finetune_micro_loss),
}

DESCRIPTIONS = {
    "init.<name>": "every state-dict tensor before step 0, the family's official/HF names and PyTorch layout "
                   "(as the family's parity weights file; includes frozen tensors such as ViTMAE position "
                   "embeddings and unilm's int64 relative_position_index)",
    "final.<name>": "the same tensors after the last optimizer step",
    "images": "[N,B,C,H,W] the N fixed batches, randn; micro-step s uses images[s % N]",
    "noise": "mae*: [S,B,L] HF random_masking noise of micro-step s (rand), passed as noise=",
    "bool_masked_pos": "beit: [S,B,L] 0/1, 1 = masked, unilm MaskingGenerator, count varies per image",
    "mask": "simmim: [S,B,L] 0/1 at model patch resolution (16x16 row-major), 1 = masked",
    "token_ids": "beit: [N,B,L] int64 target visual tokens of batch n (all patches)",
    "labels": "mae_finetune: [N,B] int64 class labels of batch n",
    "loss": "[S] each micro-batch's loss as computed (before any division by accum_iter)",
    "lr": "[O,G] float64, the lr of each param group at optimizer step o (the value optimizer.step() used)",
    "weight_decay": "[O,G] float64, the weight decay of each group at step o",
    "grad_norm": "[O] total 2-norm of all gradients before clipping, at step o (clipping applies where clip_grad is set)",
}


def run_case(name, case):
    r = case["recipe"]
    model = case["build"]()
    state_dict = case.get("state_dict", lambda m: {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()})
    init = state_dict(model)
    data = case["data"](r)
    rec, extra = case["train"](model, data, r)
    final = state_dict(model)
    tensors = {f"init.{k}": v for k, v in init.items()}
    tensors.update({f"final.{k}": v for k, v in final.items()})
    tensors.update(data)
    tensors.update(rec.tensors())
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return tensors, case["meta"](r, extra)


def verify(name, case, path):
    """Reload the file, rebuild the model from init.*, replay the stored data: everything must come out identical."""
    t = load_file(path)
    r = case["recipe"]
    init = {k[len("init."):]: v for k, v in t.items() if k.startswith("init.")}
    model = case["load"](dict(init))
    data = {k: t[k] for k in ("images", "noise", "bool_masked_pos", "mask", "token_ids", "labels") if k in t}
    rec, _ = case["train"](model, data, r)
    state_dict = case.get("state_dict", lambda m: {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()})
    for k, v in state_dict(model).items():
        assert torch.equal(v, t[f"final.{k}"]), (name, k)
    for k, v in rec.tensors().items():
        assert torch.equal(v, t[k]), (name, k)
    moved = max((t[f"final.{k}"].double() - t[f"init.{k}"].double()).abs().max().item() for k in init)
    o = t["lr"].shape[0]
    clip = r.get("clip_grad")
    clipped = int((t["grad_norm"] > clip).sum()) if clip else 0
    print(f"{name}: {len(init)} state tensors, S={t['loss'].shape[0]} micro-steps, O={o} steps, G={t['lr'].shape[1]} groups; "
          f"loss {t['loss'][0]:.5f} -> {t['loss'][-1]:.5f}; grad_norm {t['grad_norm'].min():.3f}..{t['grad_norm'].max():.3f}"
          + (f", clipped on {clipped}/{o} steps (clip {clip})" if clip else "")
          + f"; max |final - init| {moved:.4f}; {path.stat().st_size} B")


def replay_from_description(name, case, path, case_meta, tol=2e-5):
    """What the Rust test does, from the file and the json alone: the stored per-step lr / weight_decay, the
    json groups, betas, eps, accum_iter and clip_grad, and a hand-written AdamW (PyTorch's formula) must
    reproduce the losses, the gradient norms and final.* (to float32 rounding)."""
    t = load_file(path)
    h, groups = case_meta["hyper"], case_meta["groups"]
    model = case["load"]({k[len("init."):]: v for k, v in t.items() if k.startswith("init.")})
    params = dict(model.named_parameters())
    assert sorted(p for g in groups for p in g["params"]) == sorted(n for n, p in params.items() if p.requires_grad)
    b1, b2 = h["betas"] if "betas" in h else h["opt_betas"]
    eps = h["eps"] if "eps" in h else h["opt_eps"]
    accum, clip, n_iter = h.get("accum_iter") or 1, h.get("clip_grad"), h["iters_per_epoch"]
    moments = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
    o, worst = 0, {"loss": 0.0, "grad_norm": 0.0}
    for s in range(t["loss"].shape[0]):
        loss = case["micro_loss"](model, t, s, s % n_iter)
        worst["loss"] = max(worst["loss"], abs(loss.item() - t["loss"][s].item()))
        (loss / accum).backward()
        if (s + 1) % accum:
            continue
        with torch.no_grad():
            norm = torch.stack([p.grad.norm() for p in params.values() if p.grad is not None]).norm()
            worst["grad_norm"] = max(worst["grad_norm"], abs(norm.item() - t["grad_norm"][o].item()))
            coef = min(1.0, clip / (norm.item() + 1e-6)) if clip else 1.0
            for gi, g in enumerate(groups):
                lr, wd = t["lr"][o, gi].item(), t["weight_decay"][o, gi].item()
                for pn in g["params"]:
                    p, (m, v) = params[pn], moments[pn]
                    grad = p.grad * coef
                    p.mul_(1 - lr * wd)
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    denom = (v.sqrt() / math.sqrt(1 - b2 ** (o + 1))).add_(eps)
                    p.addcdiv_(m, denom, value=-lr / (1 - b1 ** (o + 1)))
                    p.grad = None
        o += 1
    assert o == t["lr"].shape[0] == t["grad_norm"].shape[0]
    final = max(key_bias_free(n, params[n].detach() - t[f"final.{n}"]).abs().max().item() for n in params)
    assert final <= tol and worst["loss"] <= tol and worst["grad_norm"] <= tol, (name, final, worst)
    print(f"  independent replay from the description: max |final diff| {final:.1e}, |loss diff| {worst['loss']:.1e}, "
          f"|grad_norm diff| {worst['grad_norm']:.1e}")


def key_bias_free(name, t):
    """`t` without any attention key bias: softmax is invariant to it, so its gradient is zero up to rounding
    and AdamW turns that rounding into steps of up to lr; it never changes the model's output, and two
    implementations (or two replays) move it differently."""
    if name.endswith("k_proj.bias"):
        return t.new_zeros(1)
    if name.endswith("qkv.bias"):
        d = t.shape[0] // 3
        return torch.cat([t[:d], t[2 * d:]])
    return t


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}  timm {timm.__version__}  transformers {transformers.__version__}  numpy {np.__version__}")
    meta = dict(
        description="Training trajectories of the official recipes (tools/make_trajectory_fixtures.py). N = "
                    "iters_per_epoch fixed batches of B images in the same order every epoch; S = epochs * N "
                    "micro-steps; O = S / accum_iter optimizer steps; G = param groups, in the order of `groups` "
                    "(= columns of lr / weight_decay). AdamW is PyTorch's: p *= 1 - lr * wd; m, v updated; "
                    "p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), t counted from 1; "
                    "parameters without a gradient are skipped (none here).",
        versions=dict(torch=torch.__version__, timm=timm.__version__, transformers=transformers.__version__,
                      numpy=np.__version__),
        official_sources={
            "facebookresearch/mae": "efb2a8062c206524e35e47d04501ed4f544c0ae8 (CC BY-NC 4.0)",
            "microsoft/unilm": "768a3c873f598bb9b4d4dfb9267b099e35f8fe56 (beit/, MIT)",
            "microsoft/SimMIM": "d3e29bcac950b83edc34ca33fe4404f38309052c (MIT)",
            "timm 0.3.2": "timm/optim/optim_factory.py add_weight_decay, as pinned by MAE and BEiT (Apache-2.0)",
        },
        deviations=["float32 on CPU, no autocast / GradScaler (AMP only rescales the loss and unscales before the "
                    "norm and the step; without overflow it changes nothing but rounding)", "one process, no DDP",
                    "drop path and dropout 0", "fixed tensors instead of data loaders and augmentation",
                    "weight decay 0.3 and tiny batches with large learning rates, so mistakes show"],
        tensors=DESCRIPTIONS,
        cases={},
    )
    total = 0
    for name, case in CASES.items():
        tensors, case_meta = run_case(name, case)
        path = OUT / f"trajectory_{name}.safetensors"
        save_file(tensors, path)
        case_meta["file"] = path.name
        case_meta["final_loss"] = float(tensors["loss"][-1])
        meta["cases"][name] = case_meta
        verify(name, case, path)
        replay_from_description(name, case, path, case_meta)
        total += path.stat().st_size
    jpath = OUT / "trajectory.json"
    jpath.write_text(json.dumps(meta, indent=1) + "\n")
    total += jpath.stat().st_size
    print(f"trajectory.json {jpath.stat().st_size} B; total {total} B")


if __name__ == "__main__":
    main()
