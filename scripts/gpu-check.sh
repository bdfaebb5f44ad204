#!/usr/bin/env bash
# Builds the engine with the CUDA backend using plain CMake (no Node needed) and runs the C++ unit tests and the GPU
# check (every CUDA op against the CPU op, timings, end-to-end engine). Exit status: non-zero when a build step, a
# unit test or a GPU check row fails.
#
#   bash scripts/gpu-check.sh                        # sm_90 only (H100/H200), build dir /tmp/kvf-gpu-check-build
#   CUDA_ARCHS="80;90" bash scripts/gpu-check.sh     # other targets (A100: 80)
#   BUILD_DIR=/tmp/b JOBS=8 bash scripts/gpu-check.sh
#   GPU_CHECK_ARGS="--no-e2e-bench" bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${BUILD_DIR:-/tmp/kvf-gpu-check-build}"
CUDA_ARCHS="${CUDA_ARCHS:-90}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 4)}"
GPU_CHECK_ARGS="${GPU_CHECK_ARGS:-}"

if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null 2>&1 || { echo "gpu-check: nvcc not found (PATH or /usr/local/cuda/bin)" >&2; exit 2; }
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

t0=$(date +%s)
echo "gpu-check: configuring $BUILD_DIR (CUDA architectures: $CUDA_ARCHS)"
cfg_log=$(cmake -S csrc -B "$BUILD_DIR" -DKVFLEET_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS" 2>&1) || { echo "$cfg_log" >&2; exit 2; }
echo "$cfg_log" | grep -q "kvfleet: CUDA backend ON" || \
  { echo "$cfg_log" >&2; echo "gpu-check: CMake did not enable the CUDA backend" >&2; exit 2; }
echo "gpu-check: building with $JOBS jobs"
cmake --build "$BUILD_DIR" -j "$JOBS" --target kvf_tests kvf_gpu_check
t1=$(date +%s)
echo "gpu-check: build took $((t1 - t0)) s"

echo "gpu-check: C++ unit tests"
"$BUILD_DIR/kvf_tests" | tail -n 3

echo "gpu-check: GPU check"
# shellcheck disable=SC2086
"$BUILD_DIR/kvf_gpu_check" $GPU_CHECK_ARGS
t2=$(date +%s)
echo "gpu-check: done in $((t2 - t0)) s (build $((t1 - t0)) s, run $((t2 - t1)) s)"
