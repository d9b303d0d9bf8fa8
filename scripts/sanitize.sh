#!/usr/bin/env bash
# Builds tests with a sanitizer in a build directory of their own (CUDA off, only the targets asked
# for) and runs them.
#   scripts/sanitize.sh address [build-dir] [targets...]   AddressSanitizer + UBSan (build-asan);
#       default targets: the torch-free cluster-attention kernel tests (~30 s from scratch)
#   scripts/sanitize.sh thread [build-dir] [targets...]    ThreadSanitizer (build-tsan); default:
#       the collective watchdog's lock-free record, read by the watchdog thread and signal handlers
#       while ranks register waits
# libtorch itself is not instrumented; torch-facing targets can be named but cost minutes.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
kind=${1:?usage: sanitize.sh address|thread [build-dir] [targets...]}
shift
case "$kind" in
  address)
    build=${1:-$src/build-asan}
    flags=(-DTESSERA_ASAN=ON "-DCMAKE_CXX_FLAGS=-fsanitize=undefined -fno-sanitize-recover=undefined")
    defaults="kernels_cluster_core_test"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
    ;;
  thread)
    build=${1:-$src/build-tsan}
    flags=(-DTESSERA_TSAN=ON)
    defaults="sharding_watchdog_test"
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
    ;;
  *)
    echo "sanitize.sh: the sanitizer must be 'address' or 'thread', got '$kind'" >&2
    exit 2
    ;;
esac
[ $# -gt 0 ] && shift
targets=${*:-$defaults}

cmake -S "$src" -B "$build" -G Ninja -DTESSERA_ENABLE_CUDA=OFF "${flags[@]}" >/dev/null
# shellcheck disable=SC2086
ninja -C "$build" -j"${TESSERA_SANITIZE_JOBS:-2}" $targets

# Some kernels map memory where TSan's shadow expects none; without ASLR (setarch -R) it fits.
norandom=()
if [ "$kind" = thread ] && setarch "$(uname -m)" -R true 2>/dev/null; then
  norandom=(setarch "$(uname -m)" -R)
fi
status=0
for t in $targets; do
  exe=$(find "$build/tests" -type f -name "$t" -perm -u+x | head -n1)
  if [[ -z "$exe" ]]; then
    echo "sanitize.sh: no executable for $t" >&2
    exit 1
  fi
  echo "== $t ($kind sanitizer)"
  "${norandom[@]}" "$exe" --gtest_color=no || status=1
done
exit $status
