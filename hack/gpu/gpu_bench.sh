#!/usr/bin/env bash
# The GPU benchmark as one call of the device tool:
#   run(command="bash hack/gpu/gpu_bench.sh", carry=[".whl"], timeout_s=540)
# Only section 5 (the compiled path), inside 8 minutes:
#   run(command="bash hack/gpu/gpu_bench.sh --skip inference --skip turbo --skip training", carry=[".whl"], timeout_s=540)
# The lent machine has torch, transformers, accelerate, peft, safetensors and pillow
# but not diffusers, compel or the server's web stack: those travel as wheels in .whl/
# (see hack/gpu/README-gpu.md for the download command) and are installed here first.
set -euo pipefail
cd "$(dirname "$0")/../.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout "${GPU_BENCH_TIMEOUT_S:-480}" python3 hack/gpu/gpu_bench.py --out "${OUT:-outputs/gpu_bench}" "$@"
