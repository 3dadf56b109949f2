#!/usr/bin/env bash
# Makes `cargo build --release --features cuda` work from registry packages alone.
#
# burn's CUDA backend (cubecl-cuda) always links LLVM: cubecl-llvm's build script asks
# tracel-llvm-bundler for it, whose build script downloads an LLVM bundle from github.com unless
# `$XDG_DATA_HOME/tracel/tracel-llvm-<version>/.tracel-llvm-installed` exists, and then runs
# `<that folder>/bin/llvm-config --link-static ...` for the headers and static libraries.
#
# This script installs a static LLVM of the same major version from PyPI (mlc-llvm-static plus
# mlc-llvm-static-extra-targets, which adds the NVPTX target; ~92 MB of wheels, ~400 MB
# unpacked) under target/cuda-llvm/, and puts an `llvm-config` and the marker where the bundler
# looks. The committed .cargo/config.toml points XDG_DATA_HOME there for cargo, so nothing has to
# be sourced: `tools/cuda/setup.sh && cargo build --release --features cuda`.
#
# Needs python3 with pip (and PyPI, or a pip cache, on the first run); reuses the install after.
# Python is also needed while cargo builds: the wheel's llvm-config is a Python script.
# No CUDA toolkit is needed to build: the binary loads the NVIDIA driver at run time.
# `cargo clean` removes target/cuda-llvm/: run this script again after it.
set -euo pipefail

LLVM_PYPI_VERSION=23.1.1.post0
LLVM_MAJOR=23

die() {
    echo "tools/cuda/setup.sh: error: $*" >&2
    exit 1
}

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64 | Linux-aarch64) ;;
    *) die "only Linux (x86_64, aarch64) is supported: PyPI's static LLVM wheels are manylinux" ;;
esac

# The bundle folder the bundler looks for is named after its version (= the crate's version).
bundler_version="$(grep -A1 '^name = "tracel-llvm-bundler"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')"
[ -n "$bundler_version" ] || die "tracel-llvm-bundler is not in Cargo.lock; is burn still built with CUDA through cubecl-llvm?"
[ "${bundler_version%%.*}" = "$LLVM_MAJOR" ] ||
    die "Cargo.lock wants LLVM ${bundler_version%%.*} (tracel-llvm-bundler $bundler_version), this script installs LLVM $LLVM_MAJOR: update LLVM_PYPI_VERSION"

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 ||
    die "'$python' not found: install Python 3 (e.g. apt-get install python3 python3-pip), or set PYTHON=/path/to/python3"
# The interpreter itself, not a shim: the llvm-config wrapper below runs it during cargo builds.
exe="$("$python" -c 'import sys; assert sys.version_info >= (3, 8); print(sys.executable)' 2>/dev/null)" || true
[ -n "$exe" ] || die "'$python' is not Python 3.8 or newer: set PYTHON=/path/to/python3"
python="$exe"
"$python" -m pip --version >/dev/null 2>&1 ||
    die "'$python -m pip' does not work: install pip (e.g. apt-get install python3-pip), or set PYTHON to a Python that has it"

base="$root/target/cuda-llvm"
pkg="$base/pkg"
stamp="$pkg/.mim-installed-$LLVM_PYPI_VERSION"
if [ -f "$stamp" ]; then
    echo "LLVM $LLVM_PYPI_VERSION already in $pkg"
else
    echo "Installing LLVM $LLVM_PYPI_VERSION from PyPI into $pkg (about 92 MB to download) ..."
    rm -rf "$pkg" "$pkg.tmp"
    mkdir -p "$base"
    # --target installs into a plain folder: no virtual environment, no system Python touched.
    PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
        --only-binary=:all: --target "$pkg.tmp" \
        "mlc-llvm-static==$LLVM_PYPI_VERSION" "mlc-llvm-static-extra-targets==$LLVM_PYPI_VERSION" ||
        die "pip could not install mlc-llvm-static==$LLVM_PYPI_VERSION (network? see pip's message above)"
    mv "$pkg.tmp" "$pkg"
    touch "$stamp"
fi

config="$pkg/mlc_llvm_static/static/bin/llvm-config"
[ -f "$config" ] || die "$config is missing: delete $pkg and run this script again"

bundle="$base/xdg/tracel/tracel-llvm-$bundler_version"
marker="$bundle/.tracel-llvm-installed"
# The wheel's llvm-config finds its prefix from its own location, so the wrapper runs it in
# place, with the Python that installed it.
wrapper="#!/bin/sh
# Written by tools/cuda/setup.sh: the LLVM from PyPI, where tracel-llvm-bundler looks.
exec \"$python\" \"$config\" \"\$@\""
# Written only when something changed: cargo reruns the bundler's build script, and rebuilds
# everything above it (about 20 minutes), whenever the marker's time changes.
if [ ! -f "$marker" ] || [ "$(cat "$bundle/bin/llvm-config" 2>/dev/null)" != "$wrapper" ]; then
    # The marker last: without it the bundler would try github.com, with it a broken wrapper fails the build.
    rm -f "$marker"
    mkdir -p "$bundle/bin"
    printf '%s\n' "$wrapper" >"$bundle/bin/llvm-config"
    chmod +x "$bundle/bin/llvm-config"
fi

targets="$("$bundle/bin/llvm-config" --targets-built)" || die "$bundle/bin/llvm-config does not run"
case " $targets " in
    *" NVPTX "*) ;;
    *) die "this LLVM lacks the NVPTX target (built: $targets)" ;;
esac
[ -f "$marker" ] || touch "$marker"

echo "LLVM $("$bundle/bin/llvm-config" --version) (NVPTX) ready for tracel-llvm-bundler $bundler_version in $bundle"
echo "Next: cargo build --release --features cuda"
