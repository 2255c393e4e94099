#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run: `bash benchmarks/gpu_suite.sh OUT [ARCHITECTURE]` on a CUDA machine.
# Builds the architecture (default ddpm-ema-celebahq-256, random weights), then runs, each under a time cap so
# that a slow step cannot starve the next: the jacobian suite in float32 (accuracy against a Krylov truth: the
# Jacobians are too large to form; the paper schemes are primed but not re-run as warm-up, paper B's n = 50
# alone runs for minutes), sampling at fp16 against DDIMPipeline at fp16 and at float32 with a profile of
# where our sampler's time goes, sampling with channels_last and torch.compile (the profile's case: in eager
# mode GroupNorm and elementwise kernels take most of the time, and NHWC convolutions are faster but
# GroupNorm copies NHWC tensors), then the jacobian suite again with the paper schemes on the papers' own
# products (--reference-mode forward: J v by forward-mode AD with a fresh forward per call), so that the ratios
# also contain the product engine; each jacobian step also times J v and J^T u by every engine. Optional step
# `sampling_fp16_cudnn`: cuDNN's algorithm search with channels_last, eager. JSON reports and logs go to OUT.
# Env: STEPS (names to run), CAP_* (seconds per step), MAPS (the jacobian step's maps, default J2,J1), DEVICE,
# MODEL_DIR, PYTHON.
set -u
out=${1:?usage: gpu_suite.sh OUT [ARCHITECTURE]}
architecture=${2:-ddpm-ema-celebahq-256}
model=${MODEL_DIR:-/tmp/bench-model}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
steps=" ${STEPS:-jacobian_fp32 sampling_fp16 sampling_fp16_compile jacobian_fp32_papers} "  # which steps to run, in this order
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
step jacobian_fp32 ${CAP_JACOBIAN:-480} --suite jacobian --dtype float32 --chunk-size 8 --no-sweep-references \
  --sweep-sizes 3,8 --reference-warmup 0 --maps "${MAPS:-J2,J1}"
step sampling_fp16 ${CAP_SAMPLING:-120} --suite sampling --dtype float16 --baseline-dtype float32 --no-memory \
  --repeats 6 --profile 15
step sampling_fp16_cudnn ${CAP_CUDNN:-120} --suite sampling --dtype float16 --cudnn-benchmark --channels-last \
  --no-memory --repeats 6 --profile 15
step sampling_fp16_compile ${CAP_COMPILE:-300} --suite sampling --dtype float16 --channels-last --compile default \
  --baseline-dtype float32 --no-memory --repeats 6 --profile 15
step jacobian_fp32_papers ${CAP_PAPERS:-300} --suite jacobian --dtype float32 --chunk-size 8 --reference-mode forward \
  --no-sweep-references --sweep-sizes 3 --reference-warmup 0 --maps "${MAPS:-J2,J1}"
