#!/usr/bin/env python3
"""Small PyTorch `.pth` files for mim's `.pth` reader (src/io/pth.rs, tests/pth.rs).

Purpose: the shapes in which published masked-image-modeling checkpoints come, in a few KB each,
so the Rust tests can check that each loads with the right tensors (compared exactly), the right
nested entry and the right ignored keys, and that a pickle naming a global outside mim's allowlist
is refused before anything runs. Only torch.save / pickle write here: nothing is unpickled, so the
malicious files are produced without running their payload.

Writes tests/fixtures/pth/:
    train_checkpoint.pth  MAE `misc.save_model` layout: {'model', 'optimizer', 'epoch', 'scaler', 'args'},
                          with float16, bfloat16, int64, a transposed (strided) and an offset view
    legacy.pth            a state dict saved with _use_new_zipfile_serialization=False
    ddp.pth               a DistributedDataParallel state dict: every key starts with 'module.'
    yacs_config.pth       SimMIM/Swin `save_checkpoint` layout: {'model', 'optimizer', 'lr_scheduler',
                          'max_accuracy' (a numpy float64), 'epoch', 'config' (a yacs CfgNode), 'amp'}
    yacs_config_p4.pth, yacs_config_legacy.pth
                          {'model', 'config'} with pickle protocol 4 (STACK_GLOBAL) and in a legacy file
    torch_folder_21_chars.pth
                          a state dict in an archive whose folder name has 21 characters, as
                          mae_pretrain_vit_base.pth would (see src/io/pth.rs, open_zip)
    model_ema.pth         unilm BEiT layout with 'model_ema' beside 'model' ('model' is preferred)
    evil.pth              an object whose __reduce__ is (os.system, ('touch /tmp/mim-pwned',)):
                          GLOBAL 'posix system' (os.system's module on Linux), protocol 2
    evil_stack_global.pth builtins.eval through STACK_GLOBAL (pickle protocol 4)
    evil_legacy.pth       the os.system object in a legacy (non-zip) file
    expected.json         per loadable file: nested key, ignored keys, and every tensor's shape and values

Run (venv setup in tools/README.md; yacs is used when installed, else a stand-in class pickled under
the name yacs.config.CfgNode, which writes the same pickle):
    ~/.mim-peer-venv/bin/python tools/make_pth_fixtures.py
Generated with torch 2.15.0, numpy 2.4.6, yacs 0.1.8.
"""
import argparse
import json
import os
import pathlib
import sys

import numpy as np
import torch
import torch.nn as nn

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pth"

try:
    from yacs.config import CfgNode
except ImportError:  # the same pickle: a dict subclass named yacs.config.CfgNode with its attributes

    class CfgNode(dict):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.__dict__.update(__immutable__=False, __deprecated_keys__=set(), __renamed_keys__={})
            self.__dict__["__new_allowed__"] = False

        def __getattr__(self, k):
            try:
                return self[k]
            except KeyError:
                raise AttributeError(k) from None

        def __setattr__(self, k, v):
            if k.startswith("__"):
                super().__setattr__(k, v)
            else:
                self[k] = v

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    sys.modules.setdefault("yacs", type(sys)("yacs"))
    sys.modules["yacs.config"] = type(sys)("yacs.config")
    sys.modules["yacs.config"].CfgNode = CfgNode


class Tiny(nn.Module):
    """A Linear, a LayerNorm and a bare Parameter, as in a ViT's head, norm and cls token."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 3))


def tiny_model(seed):
    torch.manual_seed(seed)
    m = Tiny()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    return m


def optimizer_state(model):
    """AdamW after one step: per-parameter exp_avg / exp_avg_sq tensors and the param groups."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    loss = model.norm(model.linear(x)).sum() + model.cls_token.sum()
    loss.backward()
    opt.step()
    return opt.state_dict()


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mim-pwned",))


class EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /tmp/mim-pwned')",))


def tensors_json(sd):
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            # float() of a float16/bfloat16/float32 value is exact, as is float32 of the int64 here.
            out[k] = {"dtype": str(v.dtype), "shape": list(v.shape), "values": [float(x) for x in v.flatten().tolist()]}
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {}

    # (1) MAE's misc.save_model: {'model', 'optimizer', 'epoch', 'scaler', 'args'}.
    model = tiny_model(0)
    sd = model.state_dict()
    sd["half"] = torch.linspace(-2, 2, 6).reshape(2, 3).half()
    sd["bf16"] = torch.tensor([1.5, -0.25, 3.0e5], dtype=torch.bfloat16)
    sd["index"] = torch.arange(6, dtype=torch.int64).reshape(2, 3)  # like relative_position_index
    sd["t"] = torch.arange(12.0).reshape(3, 4).t()  # strides (1, 4): a non-contiguous view
    sd["offset"] = torch.arange(10.0)[3:7]  # storage offset 3 into a 10-element storage
    assert not sd["t"].is_contiguous() and sd["offset"].storage_offset() == 3
    args = argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True, blr=1.5e-4, lr=None)
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0}
    ckpt = {"model": sd, "optimizer": optimizer_state(model), "epoch": 3, "scaler": scaler, "args": args}
    torch.save(ckpt, OUT / "train_checkpoint.pth")
    expected["train_checkpoint.pth"] = {
        "format": "PthZip",
        "nested": "model",
        "ignored": ["args", "epoch", "optimizer", "scaler"],
        "tensors": tensors_json(sd),
    }

    # (2) The pre-1.6 container.
    sd = tiny_model(1).state_dict()
    sd["t"] = torch.arange(6.0).reshape(2, 3).t()
    torch.save(sd, OUT / "legacy.pth", _use_new_zipfile_serialization=False)
    expected["legacy.pth"] = {"format": "PthLegacy", "nested": None, "ignored": [], "tensors": tensors_json(sd)}

    # (3) torch.save(ddp_model.state_dict()): every key carries DDP's 'module.' prefix.
    sd = tiny_model(2).state_dict()
    torch.save({"module." + k: v for k, v in sd.items()}, OUT / "ddp.pth")
    expected["ddp.pth"] = {"format": "PthZip", "nested": None, "ignored": [], "tensors": tensors_json(sd)}

    # (4) SimMIM / Swin save_checkpoint, with a yacs config and a numpy scalar beside the weights.
    model = tiny_model(3)
    sd = model.state_dict()
    config = CfgNode()
    config.MODEL = CfgNode()
    config.MODEL.TYPE = "swin"
    config.MODEL.SWIN = CfgNode()
    config.MODEL.SWIN.DEPTHS = [2, 2, 18, 2]
    config.TRAIN = CfgNode()
    config.TRAIN.EPOCHS = 100
    config.TRAIN.BASE_LR = 8e-4
    ckpt = {
        "model": sd,
        "optimizer": optimizer_state(model),
        "lr_scheduler": {"t_initial": 100, "warmup_t": 10},
        "max_accuracy": np.float64(83.8),
        "epoch": 99,
        "config": config,
        "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}},
    }
    torch.save(ckpt, OUT / "yacs_config.pth")
    expected["yacs_config.pth"] = {
        "format": "PthZip",
        "nested": "model",
        "ignored": ["amp", "config", "epoch", "lr_scheduler", "max_accuracy", "optimizer"],
        "tensors": tensors_json(sd),
    }
    # The config again, named through STACK_GLOBAL (protocol 4) and in a legacy file.
    small = {"model": sd, "config": config}
    torch.save(small, OUT / "yacs_config_p4.pth", pickle_protocol=4)
    torch.save(small, OUT / "yacs_config_legacy.pth", _use_new_zipfile_serialization=False)
    for name, fmt in [("yacs_config_p4.pth", "PthZip"), ("yacs_config_legacy.pth", "PthLegacy")]:
        expected[name] = {"format": fmt, "nested": "model", "ignored": ["config"], "tensors": tensors_json(sd)}

    # A 21-character file stem, as in mae_pretrain_vit_base.pth: torch names the archive folder after
    # it, so the first central-directory record is 76 bytes long, as long as torch's ZIP64 end records,
    # which the zip crate's archive-offset detection (9.9) stumbles on.
    sd = tiny_model(7).state_dict()
    torch.save(sd, OUT / "torch_folder_21_chars.pth")
    expected["torch_folder_21_chars.pth"] = {"format": "PthZip", "nested": None, "ignored": [], "tensors": tensors_json(sd)}

    # (5) unilm BEiT with --model_ema: 'model' wins over 'model_ema'.
    sd, ema = tiny_model(4).state_dict(), tiny_model(5).state_dict()
    torch.save({"model_ema": ema, "model": sd, "epoch": 1}, OUT / "model_ema.pth")
    expected["model_ema.pth"] = {
        "format": "PthZip",
        "nested": "model",
        "ignored": ["epoch", "model_ema"],
        "tensors": tensors_json(sd),
    }

    # (6) Malicious files. torch.save only pickles, so nothing below runs the payload.
    sd = tiny_model(6).state_dict()
    torch.save({"model": sd, "payload": Evil()}, OUT / "evil.pth")
    torch.save({"model": sd, "payload": EvilEval()}, OUT / "evil_stack_global.pth", pickle_protocol=4)
    torch.save({"model": sd, "payload": Evil()}, OUT / "evil_legacy.pth", _use_new_zipfile_serialization=False)
    expected["evil.pth"] = {"refused": "posix.system"}
    expected["evil_stack_global.pth"] = {"refused": "builtins.eval"}
    expected["evil_legacy.pth"] = {"refused": "posix.system"}

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")

    # The files hold what expected.json says (weights_only=True: torch's own safe loader).
    for name, e in expected.items():
        if "refused" in e:
            continue
        obj = torch.load(OUT / name, weights_only=name not in ("train_checkpoint.pth",) and "yacs" not in name)
        sd = obj[e["nested"]] if e["nested"] else obj
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        assert tensors_json(sd) == e["tensors"], name
    total = sum(f.stat().st_size for f in OUT.iterdir())
    assert total < 200_000, total
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
