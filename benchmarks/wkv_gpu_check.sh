#!/usr/bin/env bash
# One command on a CUDA machine: the Triton WKV kernels' GPU tests, then the acceptance table
# (speed vs fla and the bandwidth floor, bf16 errors, compile time) in benchmarks/results/wkv-<card>.md.
# A fresh Triton cache makes the first-call times include the real compilation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export TRITON_CACHE_DIR="$(mktemp -d)"
trap 'rm -rf "$TRITON_CACHE_DIR"' EXIT
"$PY" -m pytest -q -m gpu tests/ops/test_wkv_triton.py tests/ops/test_wkv_norm_gate.py
"$PY" benchmarks/wkv.py --device cuda --gpu-check --out benchmarks/results
