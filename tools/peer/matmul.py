"""PyTorch's fp32 matmul rate on 2048^3, the size `mim bench` measures its own rate on: prints one
JSON line (torch version, BLAS, threads, CPU, AVX-512, GFLOP/s of each of 5 repeats of 5 products).
With --shapes, one line per shape of tools/gemm-shapes (2048^3 and the MAE fmnist-tiny step's
matrices, median of 7 timings), to compare with the gemm crate kernel for kernel;
MKL_ENABLE_INSTRUCTIONS=AVX2 restricts MKL to AVX2.

    ~/.mim-peer-venv/bin/python tools/peer/matmul.py [--threads 2] >> docs/bench/matmul_mim_vs_torch.jsonl
    ~/.mim-peer-venv/bin/python tools/peer/matmul.py --shapes >> docs/bench/gemm_shapes.jsonl
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

SHAPES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gemm-shapes", "shapes.txt")


def shapes():
    """(name, m, n, k, lhs stored transposed) of tools/gemm-shapes/shapes.txt, shared with the Rust side."""
    with open(SHAPES_FILE) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, m, n, k, transposed = (x.strip() for x in line.split("|"))
                yield name, int(m), int(n), int(k), transposed == "true"


def cpu():
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor(), None
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    return name, " avx512f " in f" {info} ".replace("\n", " ")


def provenance(args):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    name, avx512 = cpu()
    return dict(commit=commit, command=" ".join([sys.executable] + sys.argv), cpu=name, avx512=avx512,
                threads=args.threads)


def rates(a, b, reps, timings):
    for _ in range(2):
        a @ b
    out = []
    for _ in range(timings):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        out.append(reps / (time.perf_counter() - t))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", action="store_true", help="one line per shape of tools/gemm-shapes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    blas = "mkl" if torch.backends.mkl.is_available() else "other"
    if args.shapes:
        isa = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "default")
        for name, m, n, k, transposed in shapes():
            a = torch.full((k, m), 0.5).t() if transposed else torch.full((m, k), 0.5)
            b = torch.full((k, n), 0.25)
            flops = 2.0 * m * n * k
            per_s = sorted(rates(a, b, max(1, min(200, int(2e10 / flops))), 7))
            print(json.dumps(dict(kind="gemm_shapes", side=f"torch {torch.__version__}, {blas} {isa}", shape=name,
                                  gflops=round(flops * per_s[3] / 1e9, 1), **provenance(args))))
        return
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    per_s = rates(a, b, 5, 5)
    print(json.dumps(dict(kind="torch_matmul", torch=torch.__version__, blas=blas, n=n,
                          gflops=[round(2 * n**3 * r / 1e9, 1) for r in per_s], **provenance(args))))


if __name__ == "__main__":
    main()
