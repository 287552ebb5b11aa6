#!/usr/bin/env bash
# The throughput sweep for one short GPU lease (one H100/H200; about 8 minutes), run from the repo root:
#
#   bash benchmarks/gpu_sweep.sh            # writes under $OUT (the device tool's folder) or /tmp/gpu-sweep
#
# 1. installs the fused-kernel wheels if they were carried along (the GPU machine has no network):
#      pip download --no-deps liger-kernel==0.8.5 cut-cross-entropy==25.1.1 -d benchmarks/wheels
#    (triton comes with CUDA PyTorch); configurations whose package is missing report the error and go on;
# 2. the `gpu`-marked tests of the knobs and the prefetcher (each knob against the plain path), <= 100 s;
# 3. benchmarks/gpu_throughput.py --sweep gpu within SWEEP_BUDGET seconds (default 330): one table
#    (tokens/s, TFLOP/s per device, MFU, peak memory, step time, data time per step) and sweep.json,
#    rewritten after every configuration so a cut-off run still leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-sweep}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}"  # shared by the sweep's processes

{ nvidia-smi; python -c "import torch, transformers, deepspeed; print(torch.__version__, torch.version.cuda, \
transformers.__version__, deepspeed.__version__)"; } > "$OUT/environment.txt" 2>&1
if compgen -G "benchmarks/wheels/*.whl" > /dev/null; then
  pip install -q --no-deps --no-index benchmarks/wheels/*.whl >> "$OUT/environment.txt" 2>&1
fi
python -c "import liger_kernel, cut_cross_entropy" >> "$OUT/environment.txt" 2>&1 || echo "fused-kernel packages missing" >> "$OUT/environment.txt"

timeout 100 python -m pytest -q -m gpu -p no:cacheprovider tests/model tests/data/test_prefetch.py \
  > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests: exit $? ($(tail -1 "$OUT/gpu_tests.txt"))"

python benchmarks/gpu_throughput.py --sweep gpu --budget "${SWEEP_BUDGET:-330}" --timeout 150 --out "$OUT" \
  2> "$OUT/sweep_stderr.txt"
