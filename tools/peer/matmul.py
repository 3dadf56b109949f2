"""PyTorch's fp32 matmul rate on 2048^3, the size `mim bench` measures its own "peak" on: prints one
JSON line (torch version, BLAS, threads, CPU, AVX-512, GFLOP/s of each of 5 repeats of 5 products).

    ~/.mim-peer-venv/bin/python tools/peer/matmul.py [--threads 2] >> docs/bench/torch_matmul.jsonl
"""
import argparse
import json
import platform
import subprocess
import sys
import time

import torch


def cpu():
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor(), None
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    return name, " avx512f " in f" {info} ".replace("\n", " ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        rates.append(5 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    name, avx512 = cpu()
    blas = "mkl" if torch.backends.mkl.is_available() else "other"
    print(json.dumps(dict(kind="torch_matmul", commit=commit, command=" ".join([sys.executable] + sys.argv),
                          cpu=name, avx512=avx512, threads=args.threads, torch=torch.__version__, blas=blas,
                          n=n, gflops=[round(r, 1) for r in rates])))


if __name__ == "__main__":
    main()
