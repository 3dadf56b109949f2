#!/usr/bin/env python3
"""Reference fixtures for mim's DALL-E encoder parity test (tests/parity_dalle.rs).

Purpose: a small random encoder of the DALL-E dVAE architecture (n_hid 16, 1 block per group,
3 input channels, 32-token vocabulary) runs on fixed 32x32 pixels; the Rust test loads the weights
through the same path as the published encoder (tools/convert_dalle_encoder.py output) and
compares logits and token ids.

The module below re-implements openai/DALL-E `dall_e/encoder.py` and `dall_e/utils.py` (Modified
MIT licence, Copyright (c) 2021 OpenAI), commit 5be4b23, with the same submodule and parameter
names: `Conv2d` (w, b, padding (kw-1)//2, float32 path), `EncoderBlock` (id_path, res_path with
relu_1 conv_1 .. relu_4 conv_4, post_gain = 1 / n_layers**2), `Encoder` (input 7x7 conv, group_1..4
with max-pool after groups 1-3, output relu + 1x1 conv) and `map_pixels` (eps 0.1). The official
package is not used (it is not installable offline and its validators require n_hid >= 64 and
vocab_size >= 512). Weights follow the official init (N(0, 1/(n_in kw^2))); biases, zero there, are
drawn N(0, 0.1^2) here so that they are exercised.

The model is pickled whole, as `encoder.pkl` is, under the class names `dall_e.encoder.Encoder`
etc., and converted with tools/convert_dalle_encoder.py in a fresh interpreter where `dall_e` cannot
be imported: the fixture weights are the converter's output, checked equal to the state dict.

Run (venv setup in tools/README.md):
    ~/.mim-peer-venv/bin/python tools/make_dalle_fixtures.py

Writes tests/fixtures/:
    dalle_tiny_encoder.safetensors  converter output (official names, PyTorch layout, float32)
    dalle_tiny_io.safetensors       pixels [2, 3, 32, 32] in [0, 1], logits [2, 32, 4, 4], ids [2, 16] (as float32)
Generated with torch 2.15.0 (CPU).
"""
import math
import pathlib
import subprocess
import sys
import tempfile
import types
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures"
LOGIT_LAPLACE_EPS = 0.1


class Conv2d(nn.Module):
    def __init__(self, n_in, n_out, kw):
        super().__init__()
        self.kw = kw
        w = torch.empty((n_out, n_in, kw, kw), dtype=torch.float32).normal_(std=1 / math.sqrt(n_in * kw ** 2))
        b = torch.empty((n_out,), dtype=torch.float32).normal_(std=0.1)
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)


class EncoderBlock(nn.Module):
    def __init__(self, n_in, n_out, n_layers):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / (n_layers ** 2)
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", Conv2d(n_in, n_hid, 3)),
            ("relu_2", nn.ReLU()), ("conv_2", Conv2d(n_hid, n_hid, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", Conv2d(n_hid, n_hid, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", Conv2d(n_hid, n_out, 1)),
        ]))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class Encoder(nn.Module):
    group_count = 4

    def __init__(self, n_hid=256, n_blk_per_group=2, input_channels=3, vocab_size=8192):
        super().__init__()
        blk_range = range(n_blk_per_group)
        n_layers = self.group_count * n_blk_per_group

        def blk(n_in, n_out):
            return EncoderBlock(n_in, n_out, n_layers)

        def group(k, pool):
            width = n_hid << (k - 1)
            first_in = n_hid if k == 1 else width // 2
            items = [(f"block_{i + 1}", blk(first_in if i == 0 else width, width)) for i in blk_range]
            if pool:
                items.append(("pool", nn.MaxPool2d(kernel_size=2)))
            return nn.Sequential(OrderedDict(items))

        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(input_channels, 1 * n_hid, 7)),
            ("group_1", group(1, True)),
            ("group_2", group(2, True)),
            ("group_3", group(3, True)),
            ("group_4", group(4, False)),
            ("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", Conv2d(8 * n_hid, vocab_size, 1))]))),
        ]))

    def forward(self, x):
        return self.blocks(x)


def map_pixels(x):
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def pickle_as_official(model, path):
    """torch.save the whole module with its classes named as in the dall_e package."""
    for cls, mod in [(Conv2d, "dall_e.utils"), (EncoderBlock, "dall_e.encoder"), (Encoder, "dall_e.encoder")]:
        sys.modules.setdefault("dall_e", types.ModuleType("dall_e"))
        m = sys.modules.setdefault(mod, types.ModuleType(mod))
        setattr(m, cls.__name__, cls)
        cls.__module__ = mod
    torch.save(model, path)


def main():
    torch.manual_seed(0)
    model = Encoder(n_hid=16, n_blk_per_group=1, input_channels=3, vocab_size=32).eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(map_pixels(pixels))
    ids = torch.argmax(logits, dim=1).flatten(1)

    weights = FIXTURES / "dalle_tiny_encoder.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        pkl = pathlib.Path(tmp) / "encoder.pkl"
        pickle_as_official(model, pkl)
        # A fresh interpreter, where `dall_e` is not importable: the converter's stand-in path.
        subprocess.run([sys.executable, str(HERE / "convert_dalle_encoder.py"), str(pkl), str(weights)], check=True)
    converted = load_file(weights)
    state = model.state_dict()
    assert converted.keys() == state.keys(), sorted(set(converted) ^ set(state))
    assert all(torch.equal(converted[k], state[k]) for k in state)
    save_file({"pixels": pixels, "logits": logits, "ids": ids.to(torch.float32)}, FIXTURES / "dalle_tiny_io.safetensors")

    reloaded = Encoder(n_hid=16, n_blk_per_group=1, input_channels=3, vocab_size=32)
    reloaded.load_state_dict(converted)
    with torch.no_grad():
        again = reloaded(map_pixels(load_file(FIXTURES / "dalle_tiny_io.safetensors")["pixels"]))
    assert torch.equal(again, logits)
    margin = logits.topk(2, dim=1).values
    print(f"wrote {weights.name} ({len(state)} tensors) and dalle_tiny_io.safetensors; logits std {logits.std():.3f}, "
          f"smallest top-1/top-2 margin {(margin[:, 0] - margin[:, 1]).min():.2e}")


if __name__ == "__main__":
    main()
