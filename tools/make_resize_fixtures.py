#!/usr/bin/env python3
"""Reference fixtures for mim's resampling (`mim::data::resize`, the evaluation transform, the
bicubic random resized crop) and for resizing published weights to another image size
(`mim::weights::resize`), checked by `tests/resize.rs`.

- `interp.*`: `torch.nn.functional.interpolate(x, size, mode, align_corners=False, antialias)` of
  two random planar arrays, every mode x antialias, to sizes up, down and mixed.
- `eval.*`: torchvision's `Resize(int(size / crop_pct), BICUBIC, antialias=True)` + `CenterCrop(size)`
  on a float tensor of random u8 pixels (MAE `util/datasets.py` evaluation transform); the
  difference from the official code's Pillow path is printed.
- `rrc.*`: torchvision's `resized_crop(img, 0, 0, h, w, [s, s], BICUBIC, antialias=True)`, what
  `RandomResizedCrop(interpolation=3)` does once it has drawn the whole image.
- `pos_embed.*`: MAE `util/pos_embed.py::interpolate_pos_embed` (square grids, copied below),
  microsoft/Swin-Transformer `load_pretrained`'s `absolute_pos_embed` resize (no extra token), and
  timm's `resample_abs_pos_embed(antialias=False)` (the same computation, non-square target).
- `rel_pos.<method>.*`: relative position bias tables `[(2w-1)^2 + extra, heads]`:
  `spline` = unilm `beit/run_class_finetuning.py` (extra 3) and SimMIM `utils.py`
  `remap_pretrained_keys_swin` (extra 0), copied below; `linear` = timm 1.0's
  `resize_rel_pos_bias_table` (scipy off, its default); `bicubic` = microsoft/Swin-Transformer
  `utils.py` `load_pretrained`.

scipy.interpolate.interp2d, which unilm and SimMIM call, was removed in SciPy 1.14; on a
rectangular grid it fitted FITPACK's `regrid` with s=0 and evaluated with `bispev`, exactly what
`RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)` does (SciPy's interp2d transition guide), so
`interp2d_cubic` below stands in for it. Checked once with SciPy 1.13.1 (the last with interp2d) on
unilm's offsets for tables of 7 -> 13, 7 -> 5, 13 -> 7, 11 -> 23 and 27 -> 47 a side: the two agree
to 4e-15.

Run (venv setup in tools/README.md; needs scipy):
    ~/.mim-peer-venv/bin/python tools/make_resize_fixtures.py

Writes tests/fixtures/resize/resize.safetensors (all f32; u8 images stored as their values;
`*.params` hold each case's numbers, see the Rust test). Deterministic (fixed seeds).
"""
import pathlib

import numpy as np
import PIL.Image
import scipy
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from scipy.interpolate import RectBivariateSpline
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torchvision.transforms import CenterCrop, InterpolationMode, Resize
from torchvision.transforms import functional as TF

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resize"


def interp2d_cubic(x, y, z):
    """`scipy.interpolate.interp2d(x, y, z, kind='cubic')` on a rectangular grid (z is [len(y), len(x)])."""
    spline = RectBivariateSpline(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64), z, kx=3, ky=3, s=0)
    return lambda dx, dy: spline(dy, dx)


class interpolate:  # noqa: N801 - stands in for `from scipy import interpolate` in the copied code
    interp2d = staticmethod(lambda x, y, z, kind: interp2d_cubic(x, y, z))


# --- facebookresearch/mae util/pos_embed.py, verbatim but for the print -----------------------------
def interpolate_pos_embed(model, checkpoint_model):
    if 'pos_embed' in checkpoint_model:
        pos_embed_checkpoint = checkpoint_model['pos_embed']
        embedding_size = pos_embed_checkpoint.shape[-1]
        num_patches = model.patch_embed.num_patches
        num_extra_tokens = model.pos_embed.shape[-2] - num_patches
        # height (== width) for the checkpoint position embedding
        orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
        # height (== width) for the new position embedding
        new_size = int(num_patches ** 0.5)
        # class_token and dist_token are kept unchanged
        if orig_size != new_size:
            extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
            # only the position tokens are interpolated
            pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
            pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
            pos_tokens = torch.nn.functional.interpolate(
                pos_tokens, size=(new_size, new_size), mode='bicubic', align_corners=False)
            pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
            new_pos_embed = torch.cat((extra_tokens, pos_tokens), dim=1)
            checkpoint_model['pos_embed'] = new_pos_embed


# --- microsoft/Swin-Transformer utils.py load_pretrained: the two resizes, verbatim ------------------
def swin_absolute_pos_embed(absolute_pos_embed_pretrained, L2):
    _, L1, C1 = absolute_pos_embed_pretrained.size()
    S1 = int(L1 ** 0.5)
    S2 = int(L2 ** 0.5)
    absolute_pos_embed_pretrained = absolute_pos_embed_pretrained.reshape(-1, S1, S1, C1)
    absolute_pos_embed_pretrained = absolute_pos_embed_pretrained.permute(0, 3, 1, 2)
    absolute_pos_embed_pretrained_resized = torch.nn.functional.interpolate(
        absolute_pos_embed_pretrained, size=(S2, S2), mode='bicubic')
    absolute_pos_embed_pretrained_resized = absolute_pos_embed_pretrained_resized.permute(0, 2, 3, 1)
    return absolute_pos_embed_pretrained_resized.flatten(1, 2)


def swin_rel_pos_bicubic(relative_position_bias_table_pretrained, L2):
    L1, nH1 = relative_position_bias_table_pretrained.size()
    nH2 = nH1
    S1 = int(L1 ** 0.5)
    S2 = int(L2 ** 0.5)
    relative_position_bias_table_pretrained_resized = torch.nn.functional.interpolate(
        relative_position_bias_table_pretrained.permute(1, 0).view(1, nH1, S1, S1), size=(S2, S2),
        mode='bicubic')
    return relative_position_bias_table_pretrained_resized.view(nH2, L2).permute(1, 0)


# --- microsoft/unilm beit/run_class_finetuning.py (and SimMIM utils.py, the same with no extra
# --- tokens): the body of the loop over relative_position_bias_table keys, verbatim but for prints ---
def unilm_rel_pos(rel_pos_bias, dst_num_pos, dst_patch_shape):
    src_num_pos, num_attn_heads = rel_pos_bias.size()
    num_extra_tokens = dst_num_pos - (dst_patch_shape[0] * 2 - 1) * (dst_patch_shape[1] * 2 - 1)
    src_size = int((src_num_pos - num_extra_tokens) ** 0.5)
    dst_size = int((dst_num_pos - num_extra_tokens) ** 0.5)
    if src_size != dst_size:
        if num_extra_tokens:  # SimMIM's Swin version has no extra rows (rel_pos_bias[-0:] would be all)
            extra_tokens = rel_pos_bias[-num_extra_tokens:, :]
            rel_pos_bias = rel_pos_bias[:-num_extra_tokens, :]

        def geometric_progression(a, r, n):
            return a * (1.0 - r ** n) / (1.0 - r)

        left, right = 1.01, 1.5
        while right - left > 1e-6:
            q = (left + right) / 2.0
            gp = geometric_progression(1, q, src_size // 2)
            if gp > dst_size // 2:
                right = q
            else:
                left = q

        dis = []
        cur = 1
        for i in range(src_size // 2):
            dis.append(cur)
            cur += q ** (i + 1)

        r_ids = [-_ for _ in reversed(dis)]

        x = r_ids + [0] + dis
        y = r_ids + [0] + dis

        t = dst_size // 2.0
        dx = np.arange(-t, t + 0.1, 1.0)
        dy = np.arange(-t, t + 0.1, 1.0)

        all_rel_pos_bias = []

        for i in range(num_attn_heads):
            z = rel_pos_bias[:, i].view(src_size, src_size).float().numpy()
            f = interpolate.interp2d(x, y, z, kind='cubic')
            all_rel_pos_bias.append(
                torch.Tensor(f(dx, dy)).contiguous().view(-1, 1).to(rel_pos_bias.device))

        rel_pos_bias = torch.cat(all_rel_pos_bias, dim=-1)

        if num_extra_tokens:
            rel_pos_bias = torch.cat((rel_pos_bias, extra_tokens), dim=0)
    return rel_pos_bias


def table_rows(window, extra):
    return (2 * window[0] - 1) * (2 * window[1] - 1) + extra


def main():
    g = torch.Generator().manual_seed(0)
    out = {}

    # torch's interpolate
    inputs = {"a": torch.randn(2, 13, 17, generator=g), "b": torch.rand(1, 61, 4, generator=g)}
    sizes = {"a": [(7, 5), (29, 40), (9, 30)], "b": [(5, 9), (1, 2)]}
    for name, x in inputs.items():
        out[f"interp.{name}.x"] = x
        for mode in ["bilinear", "bicubic"]:
            for aa in [False, True]:
                for h, w in sizes[name]:
                    y = F.interpolate(x[None], size=(h, w), mode=mode, align_corners=False, antialias=aa)[0]
                    out[f"interp.{name}.{mode}.{'aa' if aa else 'noaa'}.{h}x{w}"] = y

    # MAE's evaluation transform on tensors, and how far the official Pillow path is from it
    gaps = [0.0, 0.0]
    for k, (h, w, c, size, crop_pct) in enumerate(
        [(37, 53, 3, 16, 224 / 256), (45, 30, 1, 20, 1.0), (64, 23, 3, 24, 224 / 256), (21, 21, 1, 16, 224 / 256)]
    ):
        img = torch.randint(0, 256, (h, w, c), generator=g, dtype=torch.uint8)
        x = img.permute(2, 0, 1).float() / 255
        resize = Resize(int(size / crop_pct), interpolation=InterpolationMode.BICUBIC, antialias=True)
        y = CenterCrop(size)(resize(x))
        out[f"eval.{k}.image"] = img.float()
        out[f"eval.{k}.params"] = torch.tensor([size, crop_pct])
        out[f"eval.{k}.out"] = y
        pil = PIL.Image.fromarray(img.numpy() if c == 3 else img[..., 0].numpy())
        pil = CenterCrop(size)(Resize(int(size / crop_pct), interpolation=PIL.Image.BICUBIC)(pil))
        pil = torch.from_numpy(np.asarray(pil, dtype=np.float32)).reshape(size, size, c).permute(2, 0, 1)
        # Pillow resamples width then height in u8, rounding and clipping after each pass.
        rh, rw = resize(x).shape[1:]
        u8 = (x * 255)[None]
        for shape in [(h, rw), (rh, rw)]:
            u8 = F.interpolate(u8, size=shape, mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
        u8 = CenterCrop(size)(u8[0])
        gaps = [max(gaps[0], (pil - y * 255).abs().max().item()), max(gaps[1], (pil - u8).abs().max().item())]
    print(f"evaluation transform, Pillow path (official) vs tensor path: max |diff| {gaps[0]:.1f} / 255; with the "
          f"tensor path rounded and clipped to u8 after each pass, as Pillow does: {gaps[1]:.1f} / 255")

    # RandomResizedCrop(interpolation=BICUBIC, antialias=True) once the crop is the whole image
    for k, (h, w, c, size) in enumerate([(30, 41, 3, 16), (12, 9, 1, 20)]):
        img = torch.randint(0, 256, (h, w, c), generator=g, dtype=torch.uint8)
        x = img.permute(2, 0, 1).float() / 255
        out[f"rrc.{k}.image"] = img.float()
        out[f"rrc.{k}.out"] = TF.resized_crop(x, 0, 0, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)

    # absolute position embeddings
    class Model:
        def __init__(self, grid, extra, dim):
            self.patch_embed = type("P", (), {"num_patches": grid * grid})()
            self.pos_embed = torch.zeros(1, extra + grid * grid, dim)

    cases = []
    for k, (src, dst, extra) in enumerate([(4, 7, 1), (5, 3, 1)]):
        pe = torch.randn(1, extra + src * src, 8, generator=g)
        ck = {"pos_embed": pe.clone()}
        interpolate_pos_embed(Model(dst, extra, 8), ck)
        cases.append((pe, ck["pos_embed"], extra, (dst, dst)))
    pe = torch.randn(1, 16, 8, generator=g)
    cases.append((pe, swin_absolute_pos_embed(pe, 36), 0, (6, 6)))
    pe = torch.randn(1, 1 + 16, 8, generator=g)
    cases.append((pe, resample_abs_pos_embed(pe, [3, 6], num_prefix_tokens=1, antialias=False), 1, (3, 6)))
    for k, (pe, y, extra, grid) in enumerate(cases):
        out[f"pos_embed.{k}.in"] = pe
        out[f"pos_embed.{k}.params"] = torch.tensor([extra, *grid], dtype=torch.float32)
        out[f"pos_embed.{k}.out"] = y

    # relative position bias tables; heads 3
    rel = {
        # the last: BEiT-base fine-tuned at 384 px (14 x 14 -> 24 x 24 patches)
        "spline": [((4, 4), (7, 7), 3), ((4, 4), (3, 3), 3), ((4, 4), (6, 6), 0), ((7, 7), (4, 4), 0), ((14, 14), (24, 24), 3)],
        "linear": [((4, 4), (7, 7), 3), ((4, 4), (5, 6), 3), ((4, 4), (6, 6), 0)],
        "bicubic": [((4, 4), (6, 6), 0), ((7, 7), (4, 4), 0)],
    }
    for method, method_cases in rel.items():
        for k, (src, dst, extra) in enumerate(method_cases):
            table = torch.randn(table_rows(src, extra), 3, generator=g)
            rows = table_rows(dst, extra)
            if method == "spline":
                y = unilm_rel_pos(table.clone(), rows, dst)
            elif method == "linear":
                y = resize_rel_pos_bias_table(table.clone(), new_window_size=dst, new_bias_shape=(rows, 3))
            else:
                y = swin_rel_pos_bicubic(table.clone(), rows)
            assert y.shape == (rows, 3), (method, y.shape)
            out[f"rel_pos.{method}.{k}.in"] = table
            out[f"rel_pos.{method}.{k}.params"] = torch.tensor([extra, *dst], dtype=torch.float32)
            out[f"rel_pos.{method}.{k}.out"] = y

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "resize.safetensors"
    out = {k: v.contiguous().float() for k, v in out.items()}
    # One metadata key: safetensors writes several in no fixed order.
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, " \
        f"scipy {scipy.__version__}, pillow {PIL.__version__}"
    save_file(out, path, metadata={"versions": versions})
    back = load_file(path)
    assert all(torch.equal(back[k], v) for k, v in out.items())
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
