#!/usr/bin/env bash
# Builds kernel tests with AddressSanitizer (+ UBSan) in a separate build directory and runs them.
# CI-sized: CUDA off, only the kernel libraries and their tests are compiled.
#   scripts/asan_kernels.sh [--torch] [build-dir]     (default build-dir: build-asan)
# Default: the torch-free kernel tests (~30 s from scratch on 2 cores). --torch adds the
# libtorch-facing kernel tests (dispatch, autograd, module; ~2 min more; libtorch itself is not
# instrumented). More targets: TESSERA_ASAN_TARGETS="a b ...".
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
targets=${TESSERA_ASAN_TARGETS:-kernels_cluster_core_test}
if [[ "${1:-}" == "--torch" ]]; then
  targets="$targets kernels_cluster_attention_test"
  shift
fi
build=${1:-$src/build-asan}
jobs=${TESSERA_ASAN_JOBS:-2}

cmake -S "$src" -B "$build" -G Ninja -DTESSERA_ASAN=ON -DTESSERA_ENABLE_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=undefined -fno-sanitize-recover=undefined" >/dev/null
# shellcheck disable=SC2086
ninja -C "$build" -j"$jobs" $targets

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
status=0
for t in $targets; do
  exe=$(find "$build/tests" -type f -name "$t" -perm -u+x | head -n1)
  if [[ -z "$exe" ]]; then
    echo "asan_kernels: no executable for $t" >&2
    exit 1
  fi
  echo "== $t (AddressSanitizer + UBSan)"
  "$exe" --gtest_color=no || status=1
done
exit $status
