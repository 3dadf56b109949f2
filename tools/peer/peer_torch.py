#!/usr/bin/env python3
"""PyTorch peer of `mim bench`: the same workloads as mim, in PyTorch on the CPU, one process per variant.

Workloads (each the official PyTorch code path of the method, at mim's preset sizes):
  fmnist-tiny, vit-tiny-32, vit-base-224   MAE pretraining: HF transformers `ViTMAEForPreTraining`
  beit-tiny                                BEiT pretraining: HF `BeitForMaskedImageModeling`, block-wise
                                           mask (unilm's MaskingGenerator), random visual-token targets
  simmim-tiny                              SimMIM: timm `SwinTransformer` + SimMIM's mask token, 1x1-conv
                                           decoder and L1 loss on masked pixels (microsoft/SimMIM)
  finetune-tiny                            fine-tuning: timm `VisionTransformer` (avg pool + fc_norm),
                                           MAE's layer-wise lr decay groups, label-smoothing cross-entropy
  folder-jpeg                              data pipeline: torchvision ImageFolder + RandomResizedCrop +
                                           flip + ToTensor + Normalize through a DataLoader (--workers)

Every training step is forward + backward + the optimizer (fused AdamW by default) with the official
script's parameter groups, per-step learning rate and gradient clipping. FLOPs are counted as mim counts
them (matmuls only; a training step is 3x the forward pass); `mim bench` checks the two counts agree.

Modes:
  serve  build one workload variant, warm it up, print {"kind": "ready", ...}, then answer commands read
         on stdin, one JSON line each: `train N` (N timed steps), `infer N`, `quit` (prints the
         process's peak resident memory). `mim bench --peer` drives this, one process per variant, so
         that its steps alternate with mim's closely in time and each variant's peak memory is its own.
  run    the same, by hand: warm-up, --iters training and inference steps, one JSON line of results.

See tools/peer/README.md.
"""
import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Architectures at mim's preset sizes (src/models: MaeConfig, BeitConfig, SwinConfig); batch = mim's.
MAE = {
    "fmnist-tiny": dict(image_size=28, patch_size=4, num_channels=1, hidden_size=192, num_hidden_layers=6,
                        num_attention_heads=3, intermediate_size=768, decoder_hidden_size=128,
                        decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=512,
                        norm_pix_loss=True, layer_norm_eps=1e-6, batch=256),
    "vit-tiny-32": dict(image_size=32, patch_size=4, num_channels=3, hidden_size=192, num_hidden_layers=12,
                        num_attention_heads=3, intermediate_size=768, decoder_hidden_size=128,
                        decoder_num_hidden_layers=4, decoder_num_attention_heads=4, decoder_intermediate_size=512,
                        norm_pix_loss=True, layer_norm_eps=1e-6, batch=128),
    # HF's default ViTMAEConfig: ViT-B/16 at 224, decoder 512 x 8, no norm_pix_loss
    "vit-base-224": dict(layer_norm_eps=1e-6, batch=8),
}
BEIT = dict(img=28, patch=4, chans=1, vocab=512, dim=192, depth=6, heads=3, mlp=768, layer_scale=0.1,
            mask_ratio=0.4, clip=3.0, batch=256)
SWIN = dict(img=28, patch=2, chans=1, dim=48, depths=(2, 6), heads=(3, 6), window=7, mlp_ratio=4.0,
            drop_path=0.1, mask_ratio=0.6, clip=5.0, batch=256)
VIT = dict(img=28, patch=4, chans=1, dim=192, depth=6, heads=3, mlp=768, classes=10, drop_path=0.1,
           layer_decay=0.75, smoothing=0.1, batch=128)
FOLDER = dict(crop=28, batch=256)
WORKLOADS = list(MAE) + ["beit-tiny", "simmim-tiny", "finetune-tiny", "folder-jpeg"]


def block_flops(n, d, m):
    """Forward FLOPs of a pre-LN transformer block on n tokens: qkv + proj + MLP, QK^T and AV."""
    return 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d


def round_half_up(x):
    """Rust's f64::round for positive x (Python's round() rounds halves to even)."""
    return int(math.floor(x + 0.5))


def set_lr(opt, lr):
    """The per-iteration learning rate of the official scripts (MAE's lr_sched, BEiT's and SimMIM's schedules),
    times the group's layer-decay scale where there is one."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def decay_groups(model, weight_decay, skip=()):
    """The official scripts' two groups: no weight decay for 1-D parameters, biases and names ending in `skip`."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name.endswith(".bias") or any(name.endswith(s) for s in skip)
        (no_decay if exempt else decay).append(p)
    return [dict(params=no_decay, weight_decay=0.0), dict(params=decay, weight_decay=weight_decay)]


def adamw(groups, betas, args):
    # fused=True: PyTorch's single-kernel CPU AdamW (the per-tensor loop, --adamw loop, is several times slower)
    return torch.optim.AdamW(groups, lr=1e-4, betas=betas, fused=args.adamw == "fused",
                             foreach=True if args.adamw == "foreach" else None)


class Job:
    """One workload variant: `step()` is a training step, `infer` an inference call or None, `images` per step."""

    def __init__(self, step, infer, images, flops, params, extra=None):
        self.step, self.infer, self.images, self.flops, self.params = step, infer, images, flops, params
        self.extra = extra or {}


def train_step(model, opt, loss_fn, clip=None):
    """Forward + backward + optimizer, as the official training loops (zero_grad, backward, clip, step)."""
    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        set_lr(opt, 1e-4)
        opt.step()
    return step


def no_grad(fn):
    def call():
        with torch.no_grad():
            fn()
    return call


def mae_job(name, mask_ratio, args):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    spec = dict(MAE[name])
    batch = args.batch or spec.pop("batch")
    spec.pop("batch", None)
    cfg = ViTMAEConfig(**spec, mask_ratio=mask_ratio)
    model = ViTMAEForPreTraining(cfg)
    x = torch.randn(batch, cfg.num_channels, cfg.image_size, cfg.image_size)
    # main_pretrain.py: timm's add_weight_decay groups, betas (0.9, 0.95)
    opt = adamw(decay_groups(model, 0.05), (0.9, 0.95), args)
    fwd = torch.compile(model) if args.compile else model

    def loss():
        out = fwd(pixel_values=x)
        if mask_ratio > 0:
            return out.loss
        # HF averages over removed patches only (0/0 without any): every patch, as mim's mask-0 loss
        target = model.patchify(x)
        if cfg.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        return ((out.logits - target) ** 2).mean()

    n = (cfg.image_size // cfg.patch_size) ** 2
    keep = int(n * (1 - mask_ratio))
    pp = cfg.patch_size ** 2 * cfg.num_channels
    d, dd = cfg.hidden_size, cfg.decoder_hidden_size
    encoder = 2 * keep * pp * d + cfg.num_hidden_layers * block_flops(keep + 1, d, cfg.intermediate_size)
    forward = (encoder + 2 * (keep + 1) * d * dd
               + cfg.decoder_num_hidden_layers * block_flops(n + 1, dd, cfg.decoder_intermediate_size)
               + 2 * (n + 1) * dd * pp)
    return Job(train_step(model, opt, loss), no_grad(lambda: model.vit(pixel_values=x)), batch,
               dict(train_forward=forward, infer=encoder), model, dict(mask_ratio=mask_ratio))


def beit_masks(count, grid, num_masking_patches):
    """unilm beit/masking_generator.py's MaskingGenerator(grid, num_masking_patches, min_num_patches=16)."""
    def place(mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = random.uniform(16, max_mask_patches)
            aspect = math.exp(random.uniform(math.log(0.3), math.log(1 / 0.3)))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < grid and h < grid:
                top, left = random.randint(0, grid - h), random.randint(0, grid - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    out = []
    for _ in range(count):
        mask = np.zeros((grid, grid), dtype=np.int64)
        done = 0
        while done < num_masking_patches:
            delta = place(mask, num_masking_patches - done)
            if delta == 0:
                break
            done += delta
        out.append(mask.reshape(-1))
    return torch.from_numpy(np.stack(out)).bool()


def beit_job(args):
    from transformers import BeitConfig, BeitForMaskedImageModeling
    s = BEIT
    batch = args.batch or s["batch"]
    cfg = BeitConfig(image_size=s["img"], patch_size=s["patch"], num_channels=s["chans"], vocab_size=s["vocab"],
                     hidden_size=s["dim"], num_hidden_layers=s["depth"], num_attention_heads=s["heads"],
                     intermediate_size=s["mlp"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     drop_path_rate=0.0, layer_scale_init_value=s["layer_scale"], use_mask_token=True,
                     use_absolute_position_embeddings=False, use_relative_position_bias=False,
                     use_shared_relative_position_bias=True, layer_norm_eps=1e-6)
    model = BeitForMaskedImageModeling(cfg)
    grid = s["img"] // s["patch"]
    n = grid * grid
    masked = round_half_up(s["mask_ratio"] * n)
    x = torch.randn(batch, s["chans"], s["img"], s["img"])
    # The official loader draws masks in its workers: a pool drawn here, outside the step.
    masks = [beit_masks(batch, grid, masked) for _ in range(4)]
    ids = torch.randint(0, s["vocab"], (batch, n))  # visual tokens: the tokenizer is not timed
    # run_beit_pretraining.py: get_parameter_groups with no_weight_decay() = {pos_embed, cls_token}
    opt = adamw(decay_groups(model, 0.05, skip=("cls_token", "pos_embed")), (0.9, 0.999), args)
    beit = torch.compile(model.beit) if args.compile else model.beit
    state = dict(i=0)

    def loss():
        m = masks[state["i"] % len(masks)]
        state["i"] += 1
        seq = model.layernorm(beit(pixel_values=x, bool_masked_pos=m).last_hidden_state)
        # unilm's head runs on the masked patches only (HF's on every patch): the model's FLOPs, as mim's
        logits = model.lm_head(seq[:, 1:][m])
        return F.cross_entropy(logits, ids[m])

    forward = 2 * n * s["patch"] ** 2 * s["chans"] * s["dim"] + s["depth"] * block_flops(n + 1, s["dim"], s["mlp"])
    forward += 2 * masked * s["dim"] * s["vocab"]
    return Job(train_step(model, opt, loss, s["clip"]), None, batch, dict(train_forward=forward, infer=None), model,
               dict(mask_ratio=s["mask_ratio"], masked_patches=masked))


class SimMIM(nn.Module):
    """microsoft/SimMIM models/simmim.py (SwinTransformerForSimMIM + SimMIM) on timm's channels-last Swin."""

    def __init__(self, encoder, stride, in_chans, patch_size):
        super().__init__()
        self.encoder = encoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.trunc_normal_(self.mask_token, mean=0.0, std=0.02)
        self.decoder = nn.Sequential(nn.Conv2d(encoder.num_features, stride ** 2 * in_chans, kernel_size=1),
                                     nn.PixelShuffle(stride))
        self.in_chans, self.patch_size = in_chans, patch_size

    def forward(self, x, mask):
        enc = self.encoder
        z = enc.patch_embed(x)  # [B, H, W, C]
        w = mask.unsqueeze(-1).type_as(z)
        z = z * (1.0 - w) + self.mask_token * w
        z = enc.norm(enc.layers(z)).permute(0, 3, 1, 2)
        x_rec = self.decoder(z)
        mask = mask.repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2).unsqueeze(1)
        loss_recon = F.l1_loss(x, x_rec, reduction="none")
        return (loss_recon * mask).sum() / (mask.sum() + 1e-5) / self.in_chans


def simmim_job(args):
    from timm.models.swin_transformer import SwinTransformer
    s = SWIN
    batch = args.batch or s["batch"]
    encoder = SwinTransformer(img_size=s["img"], patch_size=s["patch"], in_chans=s["chans"], num_classes=0,
                              embed_dim=s["dim"], depths=s["depths"], num_heads=s["heads"], window_size=s["window"],
                              mlp_ratio=s["mlp_ratio"], drop_path_rate=s["drop_path"])
    stages = len(s["depths"])
    stride = s["patch"] * 2 ** (stages - 1)
    model = SimMIM(encoder, stride, s["chans"], s["patch"])
    x = torch.randn(batch, s["chans"], s["img"], s["img"])
    # SimMIM data/data_simmim.py MaskGenerator(img, mask_patch_size=stride, model_patch_size=patch, ratio),
    # drawn in the official loader's workers: a pool drawn here, outside the step.
    rand, scale = s["img"] // stride, stride // s["patch"]
    count = int(np.ceil(rand * rand * s["mask_ratio"]))

    def one():
        m = np.zeros(rand * rand, dtype=np.float32)
        m[np.random.permutation(rand * rand)[:count]] = 1
        return m.reshape(rand, rand).repeat(scale, 0).repeat(scale, 1)

    masks = [torch.from_numpy(np.stack([one() for _ in range(batch)])) for _ in range(4)]
    # get_pretrain_param_groups: 1-D, biases, skip list {mask_token, absolute_pos_embed}
    opt = adamw(decay_groups(model, 0.05, skip=("mask_token", "absolute_pos_embed")), (0.9, 0.999), args)
    fwd = torch.compile(model) if args.compile else model
    state = dict(i=0)

    def loss():
        m = masks[state["i"] % len(masks)]
        state["i"] += 1
        return fwd(x, m)

    grid = s["img"] // s["patch"]
    forward = 2 * grid * grid * s["patch"] ** 2 * s["chans"] * s["dim"]
    for i, depth in enumerate(s["depths"]):
        r, d = grid >> i, s["dim"] << i
        w = min(s["window"], r)
        if i > 0:
            forward += 2 * r * r * 2 * d * d  # patch merging: 4 (d / 2) -> d
        forward += depth * (2 * r * r * (4 * d * d + 2 * d * int(d * s["mlp_ratio"])) + 4 * r * r * w * w * d)
    r = grid >> (stages - 1)
    forward += 2 * r * r * (s["dim"] << (stages - 1)) * stride ** 2 * s["chans"]
    return Job(train_step(model, opt, loss, s["clip"]), None, batch, dict(train_forward=forward, infer=None), model,
               dict(mask_ratio=s["mask_ratio"], masked_squares=count))


def param_groups_lrd(model, weight_decay, no_weight_decay_list, layer_decay):
    """facebookresearch/mae util/lr_decay.py param_groups_lrd (following BEiT's)."""
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    groups = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or n in no_weight_decay_list
        if n in ("cls_token", "pos_embed") or n.startswith("patch_embed"):
            layer = 0
        elif n.startswith("blocks"):
            layer = int(n.split(".")[1]) + 1
        else:
            layer = num_layers
        g = groups.setdefault((layer, no_decay), dict(lr_scale=scales[layer],
                                                      weight_decay=0.0 if no_decay else weight_decay, params=[]))
        g["params"].append(p)
    return list(groups.values())


def finetune_job(args):
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models.vision_transformer import VisionTransformer
    s = VIT
    batch = args.batch or s["batch"]
    model = VisionTransformer(img_size=s["img"], patch_size=s["patch"], in_chans=s["chans"], num_classes=s["classes"],
                              embed_dim=s["dim"], depth=s["depth"], num_heads=s["heads"], mlp_ratio=s["mlp"] / s["dim"],
                              qkv_bias=True, global_pool="avg", drop_path_rate=s["drop_path"])
    x = torch.randn(batch, s["chans"], s["img"], s["img"])
    y = torch.randint(0, s["classes"], (batch,))
    # main_finetune.py: param_groups_lrd with the model's no_weight_decay(), AdamW, mixup off -> label smoothing
    groups = param_groups_lrd(model, 0.05, model.no_weight_decay(), s["layer_decay"])
    opt = adamw(groups, (0.9, 0.999), args)
    criterion = LabelSmoothingCrossEntropy(s["smoothing"])
    fwd = torch.compile(model) if args.compile else model

    def infer():
        model.eval()
        model(x)
        model.train()

    n = (s["img"] // s["patch"]) ** 2
    forward = (2 * n * s["patch"] ** 2 * s["chans"] * s["dim"] + s["depth"] * block_flops(n + 1, s["dim"], s["mlp"])
               + 2 * s["dim"] * s["classes"])
    return Job(train_step(model, opt, lambda: criterion(fwd(x), y)), no_grad(infer), batch,
               dict(train_forward=forward, infer=forward), model)


def folder_job(args):
    import torchvision
    from torchvision import transforms as T
    if not args.data or not os.path.isdir(args.data):
        raise SystemExit(f"folder-jpeg needs --data DIR, an image folder (root/CLASS/*.jpg); got {args.data!r}")
    # MAE main_pretrain.py's transform (interpolation=3: bicubic, as mim's --resample bicubic)
    transform = T.Compose([
        T.RandomResizedCrop(FOLDER["crop"], scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(args.data, transform=transform)
    batch = args.batch or FOLDER["batch"]
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, persistent_workers=args.workers > 0)
    if len(loader) == 0:
        raise SystemExit(f"{args.data} holds {len(ds)} images, fewer than one batch of {batch}")

    def epoch():
        # A whole epoch per step: each starts cold and leaves no batch in flight, as mim's loader does
        for _ in loader:
            pass

    return Job(epoch, None, len(loader) * batch, dict(train_forward=None, infer=None), None,
               dict(workers=args.workers, batches=len(loader)))


def build(args):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    w = args.workload
    if w in MAE:
        return mae_job(w, args.mask_ratio if args.mask_ratio is not None else 0.75, args)
    if args.mask_ratio is not None:
        raise SystemExit(f"--mask-ratio is for the MAE workloads ({', '.join(MAE)}), not {w}")
    return {"beit-tiny": beit_job, "simmim-tiny": simmim_job, "finetune-tiny": finetune_job,
            "folder-jpeg": folder_job}[w](args)


def peak_rss_mib():
    """Peak resident memory of this process (DataLoader workers are processes of their own, not counted).
    Linux: VmHWM, whose count starts at exec; ru_maxrss would carry over the parent's peak at fork time,
    which is mim's when mim bench starts the peer."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


def timed(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def env(args):
    import transformers
    import timm
    import torchvision
    cfg = torch.__config__.show()
    return dict(torch=torch.__version__, transformers=transformers.__version__, timm=timm.__version__,
                torchvision=torchvision.__version__, python=platform.python_version(), threads=args.threads,
                blas=cfg.split("BLAS_INFO=")[-1].split(",")[0] if "BLAS_INFO=" in cfg else "?",
                adamw=args.adamw, compiled=args.compile,
                # the vector code of ATen's kernels (ATEN_CPU_CAPABILITY) and MKL's (MKL_ENABLE_INSTRUCTIONS)
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                mkl_instructions=os.environ.get("MKL_ENABLE_INSTRUCTIONS", "default"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["serve", "run"])
    ap.add_argument("--workload", required=True, choices=WORKLOADS)
    ap.add_argument("--mask-ratio", type=float, help="MAE workloads: 0.75 (default) or 0 (every token in the encoder)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (mim bench passes its own count)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed training (and inference) steps after building")
    ap.add_argument("--iters", type=int, default=7, help="run mode: timed steps")
    ap.add_argument("--batch", type=int, help="images per step (default: mim's, in the table of the README)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adamw", choices=["fused", "foreach", "loop"], default="fused",
                    help="PyTorch's AdamW implementation (fused: the fastest on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (inductor; slow warm-up)")
    ap.add_argument("--data", help="folder-jpeg: the image folder")
    ap.add_argument("--workers", type=int, default=1, help="folder-jpeg: DataLoader workers (mim's loader has one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def say(obj):
        print(json.dumps(obj), flush=True)

    job = build(args)
    for _ in range(args.warmup):
        job.step()
        if job.infer:
            job.infer()
    params = sum(p.numel() for p in job.params.parameters() if p.requires_grad) if job.params is not None else 0
    ready = dict(kind="ready", workload=args.workload, images=job.images,
                 flops=job.flops, params=params, argv=" ".join(sys.argv), **job.extra, **env(args))
    if args.mode == "run":
        train = timed(job.step, args.iters)
        infer = timed(job.infer, args.iters) if job.infer else []
        med = statistics.median
        say(dict(ready, kind="result", train_img_s=job.images / med(train), train_times=train,
                 infer_img_s=job.images / med(infer) if infer else None, infer_times=infer, peak_rss_mib=peak_rss_mib()))
        return
    say(ready)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            say(dict(kind="bye", peak_rss_mib=peak_rss_mib()))
            return
        if cmd[0] in ("train", "infer") and len(cmd) == 2 and cmd[1].isdigit():
            fn = job.step if cmd[0] == "train" else job.infer
            if fn is None:
                say(dict(kind="error", message=f"{args.workload} has no inference measurement"))
                continue
            say(dict(kind=cmd[0], times=timed(fn, int(cmd[1]))))
        else:
            say(dict(kind="error", message=f"unknown command {line.strip()!r}: use `train N`, `infer N` or `quit`"))


if __name__ == "__main__":
    main()
