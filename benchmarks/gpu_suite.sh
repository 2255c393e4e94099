#!/usr/bin/env bash
# Issue 7's GPU figures in one run: `bash benchmarks/gpu_suite.sh OUT [ARCHITECTURE]` on a CUDA machine.
# Builds the architecture (default ddpm-ema-celebahq-256, random weights), then runs, each under a time cap so
# that a slow step cannot starve the next: the jacobian suite in float32 (accuracy against a Krylov truth: the
# Jacobians are too large to form), sampling at fp16 against DDIMPipeline at fp16 and at float32, and sampling
# with torch.compile. JSON reports and logs go to OUT. Env: STEPS (names to run), CAP_* (seconds), DEVICE, MODEL_DIR.
set -u
out=${1:?usage: gpu_suite.sh OUT [ARCHITECTURE]}
architecture=${2:-ddpm-ema-celebahq-256}
model=${MODEL_DIR:-/tmp/bench-model}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
steps=" ${STEPS:-jacobian_fp32 sampling_fp16 sampling_fp16_compile} "  # which steps to run, in this order
step() {  # step NAME SECONDS ARGS...: one benchmark run, capped, logged to OUT/NAME.log
  local name=$1 seconds=$2; shift 2
  [[ $steps == *" $name "* ]] || return 0
  echo "== $name (cap ${seconds}s): $*"
  timeout "$seconds" "${PYTHON:-python3}" -m benchmarks.run --device "${DEVICE:-cuda}" --model "$model" --json "$out/$name.json" "$@" \
    >"$out/$name.log" 2>&1
  echo "== $name exit $? after ${SECONDS}s"; tail -n 40 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${PYTHON:-python3}" -m benchmarks.build_model "$architecture" "$model" || exit 1
step jacobian_fp32 ${CAP_JACOBIAN:-340} --suite jacobian --dtype float32 --chunk-size 8 --no-sweep-references \
  --sweep-sizes 3,8
step sampling_fp16 ${CAP_SAMPLING:-150} --suite sampling --dtype float16 --baseline-dtype float32 --no-memory \
  --repeats 8
step sampling_fp16_compile ${CAP_COMPILE:-150} --suite sampling --dtype float16 --compile default \
  --baseline-dtype float32 --no-memory --repeats 10
