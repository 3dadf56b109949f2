#!/usr/bin/env python3
"""Loads what `mim convert` wrote with the reference libraries and compares their outputs with the
outputs recorded for the source fixture (tests/fixtures/published): proof that the files mim writes
are the ones transformers and timm expect, not only that mim reads its own files back.

    cargo build --release
    ~/.mim-venv/bin/python tools/check_converted.py [--mim target/release/mim] [--out docs/weights_convert_check.jsonl]

Each case converts one fixture with `mim convert`, builds the reference model from the written
folder or file alone (`from_pretrained`, or timm's `checkpoint_filter_fn`-free strict load) and
compares the recorded tensors; strict loading (no missing or unexpected keys) is required.
"""
import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import tempfile

import timm
import torch
import transformers
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests/fixtures/published"


def io(name):
    return load_file(FIX / f"{name}_io.safetensors")


def convert(mim, src, out, to):
    subprocess.run([mim, "convert", str(FIX / src), str(out), "--to", to], check=True, capture_output=True)


def strict(model, info):
    assert not any(info.values()), info
    return model.eval()


def case_beit_mim(mim, d):
    from transformers import BeitForMaskedImageModeling
    convert(mim, "beit_official_pretrain.pth", d / "model.safetensors", "hf")
    m = strict(*BeitForMaskedImageModeling.from_pretrained(d, output_loading_info=True))
    r = io("beit_official_pretrain")
    mask = r["bool_masked_pos"].bool()
    with torch.no_grad():
        logits = m(pixel_values=r["pixel_values"], bool_masked_pos=mask).logits
    # The official model's lm_head runs on the masked tokens only.
    return {"logits": (logits[mask], r["logits"])}


def case_beit_classifier(mim, d):
    from transformers import BeitForImageClassification
    convert(mim, "beit_official_finetuned.pth", d / "model.safetensors", "hf")
    m = strict(*BeitForImageClassification.from_pretrained(d, output_loading_info=True))
    r = io("beit_official_finetuned")
    with torch.no_grad():
        return {"logits": (m(pixel_values=r["pixel_values"]).logits, r["logits"])}


def case_swin_classifier(mim, d):
    from transformers import SwinForImageClassification
    convert(mim, "swin_official_finetuned.pth", d / "model.safetensors", "hf")
    m = strict(*SwinForImageClassification.from_pretrained(d, output_loading_info=True))
    r = io("swin_official_finetuned")
    with torch.no_grad():
        return {"logits": (m(pixel_values=r["pixel_values"]).logits, r["logits"])}


def case_simmim(mim, d):
    from transformers import SwinForMaskedImageModeling
    convert(mim, "simmim_swin.pth", d / "model.safetensors", "hf")
    m = strict(*SwinForMaskedImageModeling.from_pretrained(d, output_loading_info=True))
    r = io("simmim_swin")
    with torch.no_grad():
        out = m(pixel_values=r["pixel_values"], bool_masked_pos=r["mask"].flatten(1).bool())
    return {"reconstruction": (out.reconstruction, r["reconstruction"]), "loss": (out.loss.reshape(1), r["loss"])}


def case_swin_timm(mim, d, src="swin_hf/model.safetensors", ref="swin_hf", key="logits"):
    """A Hugging Face Swin written in timm names, loaded strictly into timm's SwinTransformer."""
    convert(mim, src, d / "model.safetensors", "timm")
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=2, embed_dim=6,
                          depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4, num_classes=5)
    m.load_state_dict(load_file(d / "model.safetensors"), strict=False)  # non-persistent buffers aside
    missing = [k for k in m.state_dict() if k not in load_file(d / "model.safetensors")
               and not k.endswith(("relative_position_index", "attn_mask"))]
    assert not missing, missing
    r = io(ref)
    with torch.no_grad():
        return {key: (m.eval()(r["pixel_values"]), r[key])}


def case_swin_official(mim, d):
    """A timm Swin written in the official layout, loaded strictly (buffers aside) into the official code."""
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    import official_code as oc
    convert(mim, "swin_timm.safetensors", d / "model.safetensors", "official")
    m = oc.SwinTransformer(img_size=32, patch_size=2, in_chans=3, embed_dim=6, depths=[2, 2, 2], num_heads=[2, 2, 4],
                           window_size=4, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                           drop_path_rate=0.0, ape=False, patch_norm=True, num_classes=5)
    sd = load_file(d / "model.safetensors")
    info = m.load_state_dict(sd, strict=False)
    assert not info.unexpected_keys and all(k.endswith(("relative_position_index", "attn_mask")) for k in info.missing_keys), info
    r = io("swin_timm")
    with torch.no_grad():
        return {"logits": (m.eval()(r["pixel_values"]), r["logits"])}


CASES = {
    "BEiT official .pth -> hf BeitForMaskedImageModeling": case_beit_mim,
    "BEiT official fine-tuned .pth -> hf BeitForImageClassification": case_beit_classifier,
    "Swin official .pth -> hf SwinForImageClassification": case_swin_classifier,
    "SimMIM official .pth -> hf SwinForMaskedImageModeling": case_simmim,
    "Swin hf -> timm SwinTransformer": case_swin_timm,
    "Swin timm -> official SwinTransformer": case_swin_official,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mim", default=str(ROOT / "target/release/mim"))
    parser.add_argument("--out", help="append one JSON line per case here")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, case) in enumerate(CASES.items()):
            d = pathlib.Path(tmp) / str(i)
            d.mkdir()
            pairs = case(opts.mim, d)
            diffs = {k: (a - b).abs().max().item() for k, (a, b) in pairs.items()}
            worst = max(diffs.values())
            worst_all = max(worst_all, worst)
            print(f"{name:66s} {' '.join(f'{k} {v:.1e}' for k, v in diffs.items())}")
            if opts.out:
                with open(opts.out, "a") as f:
                    f.write(json.dumps(dict(check="mim convert -> reference library", case=name, max_abs_diff=diffs,
                                            commit=commit, command="tools/check_converted.py",
                                            torch=torch.__version__, transformers=transformers.__version__,
                                            timm=timm.__version__, machine=platform.machine(),
                                            date=datetime.date.today().isoformat())) + "\n")
    assert worst_all < 1e-4, worst_all
    print(f"all within {worst_all:.1e}")


if __name__ == "__main__":
    main()
