#!/usr/bin/env bash
# Creates the PyTorch peer's venv (default ~/.mim-peer-venv; pass another folder as $1) with the
# versions `mim bench` was measured against, then checks it imports. About 2 minutes and 5-6 GB:
# PyPI's default torch wheel carries CUDA libraries. PIP_INDEX_URL=https://download.pytorch.org/whl/cpu
# gives the CPU-only wheels (same version numbers with a +cpu suffix).
set -euo pipefail
venv="${1:-$HOME/.mim-peer-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --upgrade pip
"$venv/bin/pip" install \
    torch==2.15.0 torchvision==0.29.2 transformers==5.24.0 timm==1.0.31 \
    safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0
"$venv/bin/python" -c "import torch, torchvision, transformers, timm; print('peer venv ready:', torch.__version__, transformers.__version__, timm.__version__, torchvision.__version__)"
echo "run: cargo run --release -- bench --peer $venv/bin/python"
