#!/usr/bin/env bash
# Builds the tests of lock-free code shared between threads with ThreadSanitizer in a separate
# build directory and runs them (the collective watchdog's in-flight record, read by the watchdog
# thread and signal handlers while ranks register waits). Torch- and MPI-free targets only.
#   scripts/tsan.sh [build-dir]     (default build-dir: build-tsan)
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
targets=${TESSERA_TSAN_TARGETS:-sharding_watchdog_test}
build=${1:-$src/build-tsan}

cmake -S "$src" -B "$build" -G Ninja -DTESSERA_TSAN=ON -DTESSERA_ENABLE_CUDA=OFF >/dev/null
# shellcheck disable=SC2086
ninja -C "$build" -j"${TESSERA_TSAN_JOBS:-2}" $targets

export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
status=0
for t in $targets; do
  exe=$(find "$build/tests" -type f -name "$t" -perm -u+x | head -n1)
  if [[ -z "$exe" ]]; then
    echo "tsan: no executable for $t" >&2
    exit 1
  fi
  echo "== $t (ThreadSanitizer)"
  # Some kernels map memory where TSan's shadow expects none; setarch -R (no ASLR) avoids that.
  if setarch "$(uname -m)" -R true 2>/dev/null; then
    setarch "$(uname -m)" -R "$exe" --gtest_color=no || status=1
  else
    "$exe" --gtest_color=no || status=1
  fi
done
exit $status
