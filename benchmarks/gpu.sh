#!/usr/bin/env bash
# The paper-size checks on a CUDA machine (issue 16, item 6): Linearity, SPAQ and MetaIQA forward+backward,
# I-FGSM, batch-size throughput and fp32/bf16/fp16 at their native sizes, DiffPure t=5 on a 256x256 image,
# MPRNet and Real-ESRGAN on a 299x299 image, the default grid; random weights in the official checkpoint
# layouts. Writes JSON (benchmarks/results/gpu-<date>.json, or --out PATH) and prints its path last.
#
#   bash benchmarks/gpu.sh                       # CUDA, under 8 minutes on one GPU
#   bash benchmarks/gpu.sh --quick               # CPU smoke run: tiny sizes, 1 repeat (figures meaningless)
#   bash benchmarks/gpu.sh --only spaq grid --out /tmp/gpu.json
#
# Every option goes to benchmarks/gpu.py (`python benchmarks/gpu.py --help`). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import iqadef" >/dev/null 2>&1; then
    echo "iqadef is not importable: pip install -e ." >&2
    "$PYTHON" -m pip install -e .
fi
exec "$PYTHON" benchmarks/gpu.py "$@"
