#!/usr/bin/env bash
# Builds the torch-free kernel tests with AddressSanitizer (and UBSan) in a separate build
# directory and runs them. CI-sized: only the kernel cores and their tests are compiled, CUDA off.
#   scripts/asan_kernels.sh [build-dir]          (default: build-asan next to the sources)
# More torch-free kernel test targets go in TESSERA_ASAN_TARGETS (space-separated).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-asan}
targets=${TESSERA_ASAN_TARGETS:-kernels_cluster_core_test}
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
  echo "== $t (AddressSanitizer)"
  "$exe" --gtest_color=no || status=1
done
exit $status
