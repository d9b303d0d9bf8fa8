#!/usr/bin/env bash
# Builds tests with a sanitizer in a build directory of their own (CUDA off) and runs them.
#   scripts/sanitize.sh address [build-dir] [targets...]   AddressSanitizer + UBSan (build-asan);
#       default targets: the torch-free cluster-attention kernel tests (~30 s from scratch)
#   scripts/sanitize.sh address-all [build-dir] [ctest args...]   AddressSanitizer + UBSan
#       (-fno-sanitize-recover=undefined) over EVERYTHING (build-asan-all): builds every target and
#       runs the whole ctest there (ctest args such as -R/-E/-L narrow it). mpirun ranks, servers
#       and the `tessera` processes the tests start are instrumented and inherit the options below;
#       the Python tests that load libtessera_torch.so into /usr/bin/python3 run through
#       scripts/sanitizers/asan-python3 (ASan's runtime LD_PRELOADed). LeakSanitizer ignores leaks
#       allocated inside Open MPI, libtorch and CPython (scripts/sanitizers/lsan.supp; third-party
#       libraries only). Tests not run under it: ASAN_ALL_EXCLUDE below, each with its reason.
#       Hours on the 2-core machine (docs/reliability.md, "Sanitizers").
#   scripts/sanitize.sh thread [build-dir] [targets...]    ThreadSanitizer (build-tsan); default:
#       the threaded parts: the collective watchdog (its lock-free record, read by the watchdog
#       thread and signal handlers while ranks register waits), the scheduler, the HTTP server
#       and API over a threaded fake engine, the router in one process (replicas, router and
#       clients as threads: serving_router_unit_test), the router policy and the backend cache's
#       single-flight load, and the engine loop (AsyncEngine/EngineClient in engine_test).
#       A target may carry a GoogleTest filter: name:filter. libtorch and its OpenMP runtime are
#       not instrumented: reports inside them are suppressed (scripts/sanitizers/tsan.supp).
# The build runs under `nice -n 19` with TESSERA_SANITIZE_JOBS jobs (default 2).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
kind=${1:?usage: sanitize.sh address|address-all|thread [build-dir] [targets...]}
shift
supp=$src/scripts/sanitizers
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$supp/lsan.supp:print_suppressions=0}
case "$kind" in
  address | address-all)
    build=${1:-$src/build-asan}
    [ "$kind" = address-all ] && build=${1:-$src/build-asan-all}
    flags=(-DTESSERA_ASAN=ON "-DCMAKE_CXX_FLAGS=-fsanitize=undefined -fno-sanitize-recover=undefined")
    defaults="kernels_cluster_core_test"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ;;
  thread)
    build=${1:-$src/build-tsan}
    flags=(-DTESSERA_TSAN=ON)
    defaults="sharding_watchdog_test scheduler_test serving_unit_test serving_test"
    defaults+=" serving_router_unit_test"
    defaults+=" engine_test:*Async*"
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp}
    ;;
  *)
    echo "sanitize.sh: the sanitizer must be 'address', 'address-all' or 'thread', got '$kind'" >&2
    exit 2
    ;;
esac
[ $# -gt 0 ] && shift
# Absolute: processes the tests start in other folders find the preload library and the build.
build=$(realpath -m "$build")
jobs=${TESSERA_SANITIZE_JOBS:-2}

if [ "$kind" = address-all ]; then
  # Not run under ASan (each with its reason; keep this list short):
  #   clang_format: a style check, runs no Tessera code.
  ASAN_ALL_EXCLUDE=${ASAN_ALL_EXCLUDE:-^clang_format$}
  cmake -S "$src" -B "$build" -G Ninja -DTESSERA_ENABLE_CUDA=OFF "${flags[@]}" \
    "-DTESSERA_TORCH_PYTHON=$supp/asan-python3" \
    "-DTESSERA_VENV_PYTHON=${TESSERA_VENV:-${TESSERA_BUILD_DIR:-$src/build}/venv}/bin/python" >/dev/null
  t0=$(date +%s)
  nice -n 19 ninja -C "$build" -j"$jobs"
  # slurm_pmi2_test runs `tessera` built against MPICH (srun --mpi=pmi2), from "$build-mpich":
  # built here with the same sanitizers (exit 77: MPICH not installed, the entry skips).
  TESSERA_MPICH_BUILD_DIR="$build-mpich" nice -n 19 "$src/scripts/build_mpich.sh" \
    -DTESSERA_ENABLE_CUDA=OFF "${flags[@]}" || [ $? -eq 77 ]
  t1=$(date +%s)
  # Open MPI's plugins stay loaded until exit (scripts/sanitizers/no_dlclose.c), in every process
  # the tests start; ASan's runtime then is not the first preloaded library, which is fine here.
  gcc -O1 -shared -fPIC -o "$build/libno_dlclose.so" "$supp/no_dlclose.c"
  export LD_PRELOAD="$build/libno_dlclose.so${LD_PRELOAD:+ $LD_PRELOAD}"
  export ASAN_OPTIONS="$ASAN_OPTIONS:verify_asan_link_order=0"
  status=0
  (cd "$build" && nice -n 19 ctest --output-on-failure -j "$jobs" --timeout 1800 \
    -E "$ASAN_ALL_EXCLUDE" "$@") || status=1
  echo "sanitize.sh address-all: build $((t1 - t0)) s, ctest $(($(date +%s) - t1)) s"
  exit $status
fi

targets=${*:-$defaults}
set -f  # name:filter targets hold glob characters
# shellcheck disable=SC2086
ninja_targets=$(for t in $targets; do echo "${t%%:*}"; done | tr '\n' ' ')
cmake -S "$src" -B "$build" -G Ninja -DTESSERA_ENABLE_CUDA=OFF "${flags[@]}" >/dev/null
# shellcheck disable=SC2086
nice -n 19 ninja -C "$build" -j"$jobs" $ninja_targets

# Some kernels map memory where TSan's shadow expects none; without ASLR (setarch -R) it fits.
norandom=()
if [ "$kind" = thread ] && setarch "$(uname -m)" -R true 2>/dev/null; then
  norandom=(setarch "$(uname -m)" -R)
fi
# What the tests find in their environment under ctest (tests/CMakeLists.txt's TESSERA_TEST_ENV).
export TESSERA_NUM_THREADS=${TESSERA_NUM_THREADS:-1}
export TESSERA_MODEL_CACHE=${TESSERA_MODEL_CACHE:-$build/test-models}
status=0
for t in $targets; do
  name=${t%%:*}
  filter=()
  [ "$name" != "$t" ] && filter=("--gtest_filter=${t#*:}")
  exe=$(find "$build/tests" -type f -name "$name" -perm -u+x | head -n1)
  if [[ -z "$exe" ]]; then
    echo "sanitize.sh: no executable for $name" >&2
    exit 1
  fi
  echo "== $t ($kind sanitizer)"
  "${norandom[@]}" "$exe" --gtest_color=no "${filter[@]}" || status=1
done
exit $status
