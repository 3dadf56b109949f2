#!/usr/bin/env python3
"""Convert OpenAI's DALL-E dVAE encoder (`encoder.pkl`) to safetensors for mim.

The user obtains `encoder.pkl` themselves (openai/DALL-E README; this script never downloads
anything). It is a whole pickled `dall_e.encoder.Encoder` module. When the `dall_e` package is
installed it is unpickled normally; otherwise its classes are replaced by empty stand-ins that only
keep the pickled state, which is all that is needed to read the parameters (so `pip install DALL-E`
is not required).

Output: one float32 tensor per parameter under the official module names, PyTorch layout:
    blocks.input.{w,b}                                  w: [n_hid, 3, 7, 7]
    blocks.group_{g}.block_{i}.id_path.{w,b}             1x1, only where the width changes
    blocks.group_{g}.block_{i}.res_path.conv_{1..4}.{w,b}
    blocks.output.conv.{w,b}                             w: [vocab_size, 8 n_hid, 1, 1]
(g = 1..4, i = 1..n_blk_per_group). mim reads the architecture from the shapes:
    mim::models::dalle::DalleEncoder::from_safetensors(path, &device)

Usage:
    ~/.mim-peer-venv/bin/python tools/convert_dalle_encoder.py encoder.pkl dalle_encoder.safetensors
"""
import argparse
import pickle
import re
import types

import torch
from safetensors.torch import save_file

NAME = re.compile(r"^blocks\.(input|output\.conv|group_[1-4]\.block_\d+\.(id_path|res_path\.conv_[1-4]))\.[wb]$")


class _Stub:
    """Stand-in for a `dall_e` class: keeps the pickled attributes (including nn.Module's
    `_parameters` and `_modules`) without running any of its code."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "dall_e" or module.startswith("dall_e."):
            try:
                return super().find_class(module, name)
            except ImportError:
                return type(name, (_Stub,), {})
        return super().find_class(module, name)


_stub_pickle = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__="pickle")


def parameters(obj, prefix=""):
    """Official state-dict names and tensors of a (real or stand-in) module tree."""
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)  # already a state dict
    out = {}
    state = vars(obj)
    for name, p in state.get("_parameters", {}).items():
        if p is not None:
            out[prefix + name] = p
    for name, m in state.get("_modules", {}).items():
        if m is not None:
            out.update(parameters(m, prefix + name + "."))
    return out


def convert(src, dst):
    obj = torch.load(src, map_location="cpu", pickle_module=_stub_pickle, weights_only=False)
    params = parameters(obj)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in params.items()}
    unknown = sorted(k for k in tensors if not NAME.match(k))
    if unknown or "blocks.input.w" not in tensors or "blocks.output.conv.w" not in tensors:
        raise SystemExit(f"{src}: not a DALL-E encoder (unexpected or missing tensors: {unknown[:5]})")
    save_file(tensors, dst, metadata={"format": "dall_e.encoder.Encoder", "layout": "pytorch"})
    w = tensors["blocks.input.w"]
    blocks = len([k for k in tensors if re.match(r"blocks\.group_1\.block_\d+\.res_path\.conv_1\.w$", k)])
    print(f"{dst}: {len(tensors)} tensors; n_hid {w.shape[0]}, {blocks} blocks per group, {w.shape[1]} input channels, "
          f"vocab {tensors['blocks.output.conv.w'].shape[0]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("encoder_pkl")
    ap.add_argument("out_safetensors")
    a = ap.parse_args()
    convert(a.encoder_pkl, a.out_safetensors)


if __name__ == "__main__":
    main()
