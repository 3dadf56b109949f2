#!/usr/bin/env bash
# The GPU check: run on a machine with an NVIDIA GPU and no network, against a prebuilt binary
# (no Rust toolchain there), in under 8 minutes. Build the binary beforehand with
#   tools/cuda/setup.sh && cargo build --release --features cuda && strip target/release/mim
# and copy it with tests/fixtures. Writes into OUT (default gpu-check/): device.csv, check.md
# (parity of every model's forward value and gradients with the PyTorch fixtures, on the GPU),
# bench.jsonl + bench.md (training and encoder throughput, fmnist-tiny and ViT-B/16), memory.csv
# (GPU memory sampled every 200 ms during the benchmark; its maximum is the peak), and with two
# or more GPUs ddp.md: one epoch of MAE pretraining on the shipped subset data-parallel on cuda:0,cuda:1
# (64 images each) beside the same run on cuda:0 alone (128 images), their losses and throughput.
#
#   tools/gpu-check.sh [MIM_BINARY] [FIXTURES_DIR]
# Environment: DEVICE (default cuda:0), OUT, WORKLOADS (default fmnist-tiny,vit-base-224), DATA (default
# data/fashion-mnist-subset, copied with the binary). bf16: not measured (mim trains in f32; burn 0.22
# has no mixed precision).
set -uo pipefail
MIM=${1:-target/release/mim}
FIXTURES=${2:-tests/fixtures}
DEVICE=${DEVICE:-cuda:0}
OUT=${OUT:-gpu-check}
WORKLOADS=${WORKLOADS:-fmnist-tiny,vit-base-224}
DATA=${DATA:-data/fashion-mnist-subset}
mkdir -p "$OUT"
status=0
step() { echo "== $1 ($(date +%T))"; }

step "device"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/device.csv"
else
    echo "no nvidia-smi on this machine" | tee "$OUT/device.csv"
fi
"$MIM" --version | tee -a "$OUT/device.csv"

step "parity with the PyTorch fixtures on $DEVICE"
timeout 180 "$MIM" check --device "$DEVICE" --fixtures "$FIXTURES" | tee "$OUT/check.md" || status=1

step "throughput on $DEVICE: $WORKLOADS"
sampler=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/memory.csv" &
    sampler=$!
fi
timeout 240 "$MIM" bench --device "$DEVICE" --workloads "$WORKLOADS" --no-mask-variant fmnist-tiny \
    --warmup 2 --iters 5 --out "$OUT/bench.jsonl" | tee "$OUT/bench.md" || status=1
if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null
    echo "peak GPU memory during the benchmark: $(cut -d, -f2 "$OUT/memory.csv" | sort -n | tail -1) MiB" | tee -a "$OUT/bench.md"
fi

gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
if [ "$gpus" -ge 2 ]; then
    step "data parallel on cuda:0,cuda:1 against cuda:0 alone"
    pretrain() { timeout 120 "$MIM" pretrain --data "$DATA" --model mae_tiny_28 --epochs 1 --seed 0 --checkpoint-every 1 "$@"; }
    rm -rf "$OUT/ddp-one" "$OUT/ddp-two"
    pretrain --device cuda:0 --batch-size 128 --out "$OUT/ddp-one" > "$OUT/ddp-one.log" 2>&1 || status=1
    pretrain --devices cuda:0,cuda:1 --batch-size 64 --out "$OUT/ddp-two" > "$OUT/ddp-two.log" 2>&1 || status=1
    for run in one two; do
        echo "$run: $(tail -n 1 "$OUT/ddp-$run/metrics.jsonl" 2>/dev/null || echo 'no metrics (see ddp-'$run'.log)')"
    done | tee "$OUT/ddp.md"
else
    echo "data parallel: skipped ($gpus GPU(s))" | tee "$OUT/ddp.md"
fi

step "done: results in $OUT/ (exit $status)"
exit $status
