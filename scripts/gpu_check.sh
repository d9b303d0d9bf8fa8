#!/usr/bin/env bash
# The GPU half of the test suite in one command, for a machine with a GPU and no package registry
# (the `device` machines: CUDA 13, CMake, ninja and a CUDA build of PyTorch, nothing else).
#
#   here:   scripts/fetch_gpu_debs.sh .devdeps        (Debian packages: OpenMPI, Boost, spdlog, ...)
#   there:  bash scripts/gpu_check.sh                 (with .devdeps carried; logs go to $OUT)
#
# Steps, each logged to <step>.log and timed in summary.txt: unpack the packages under
# /opt/deps; configure against python3's libtorch (CMAKE_PREFIX_PATH, -DCMAKE_CUDA_ARCHITECTURES=90;
# NCCL is the one that torch loads); build; run the `gpu`-labelled tests (CUDA kernels against
# their CPU reference, the NCCL communicator at world size 1, the op library on CUDA tensors from
# Python); then the CUDA kernel tests again under compute-sanitizer (memcheck: out-of-bounds and
# misaligned accesses; initcheck: reads of device memory nobody wrote), where the machine has it
# and its runtime supports it; then every other test against this libtorch; then `tessera bench kernels --json` (its GPU part).
# A failing step is recorded and the next steps still run, so that one call brings back as much as
# possible. $OUT gets three files (the device tool brings back at most eight): summary.txt,
# bench_kernels.json and logs.tar.gz with every step's log. Exit status: 0 when every step passed.
#   TESSERA_GPU_STEPS="configure build gpu memcheck all bench"  limits the steps (unpack always runs)
#   TESSERA_DEVDEPS=.devdeps  TESSERA_DEPS_PREFIX=/opt/deps  TESSERA_GPU_BUILD=build-gpu
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
out=$(mktemp -d)  # the step logs, packed into $OUT/logs.tar.gz at the end
debs=${TESSERA_DEVDEPS:-$root/.devdeps}
prefix=${TESSERA_DEPS_PREFIX:-/opt/deps}
build=${TESSERA_GPU_BUILD:-$root/build-gpu}
steps=${TESSERA_GPU_STEPS:-configure build gpu memcheck all bench}
python=${TESSERA_PYTHON:-$(command -v python3)}
jobs=$(nproc)
summary="$OUT/summary.txt"
: > "$summary"
status=0

note() { echo "$*" | tee -a "$summary"; }
want() { [[ " $steps " == *" $1 "* ]]; }
# run_step NAME COMMAND...: runs it with its output in $out/NAME.log, records time and status.
run_step() {
  local name=$1
  shift
  local t0 rc
  t0=$(date +%s)
  "$@" > "$out/$name.log" 2>&1
  rc=$?
  note "$name: rc=$rc, $(( $(date +%s) - t0 )) s"
  if [ $rc -ne 0 ]; then
    status=1
    tail -n 40 "$out/$name.log"
  fi
  return $rc
}

note "host: $(uname -n), $(nproc) cores, $(date -u +%FT%TZ), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed"; } \
  2>&1 | sed 's/^/gpu: /' | tee -a "$summary"
"$python" -c 'import torch, sys; print("python:", sys.version.split()[0], "torch:", torch.__version__, "cuda:", torch.version.cuda, "available:", torch.cuda.is_available())' \
  2>&1 | tee -a "$summary"

# Debian packages unpacked under a prefix: OpenMPI finds itself through OPAL_PREFIX; dpkg -x does
# not run maintainer scripts, so the alternatives links (mpirun, mpicxx) are named by their
# .openmpi names below.
unpack() {
  shopt -s nullglob
  local f n=0
  mkdir -p "$prefix"
  for f in "$debs"/*.deb; do
    dpkg -x "$f" "$prefix" || return 1
    n=$((n + 1))
  done
  echo "unpacked $n packages from $debs into $prefix"
  [ $n -gt 0 ]
}
if ! run_step unpack unpack; then
  note "no packages to unpack: run scripts/fetch_gpu_debs.sh .devdeps on a machine with apt and carry .devdeps"
fi
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
export OPAL_PREFIX=$prefix/usr
export PATH=$prefix/usr/bin:$PATH
export LD_LIBRARY_PATH=$prefix/usr/lib/$multiarch:$prefix/usr/lib/$multiarch/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
torch_cmake=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
export CMAKE_PREFIX_PATH=$prefix/usr:$torch_cmake${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
source "$root/scripts/env.sh"

if want configure; then
  mpicxx=$prefix/usr/bin/mpicxx.openmpi
  mpiexec=$prefix/usr/bin/mpirun.openmpi
  [ -x "$mpicxx" ] || mpicxx=$(command -v mpicxx || true)
  [ -x "$mpiexec" ] || mpiexec=$(command -v mpirun || true)
  run_step configure cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CUDA_ARCHITECTURES="${TESSERA_CUDA_ARCHITECTURES:-90}" \
    -DMPI_CXX_COMPILER="$mpicxx" -DMPIEXEC_EXECUTABLE="$mpiexec" \
    -DTESSERA_TORCH_PYTHON="$python" || steps=""
  grep -E "NCCL_LIBRARY:|TESSERA_TORCH_PYTHON:|MPIEXEC_EXECUTABLE:|CMAKE_CUDA_ARCHITECTURES:" \
    "$build/CMakeCache.txt" 2>/dev/null | sed 's/^/cache: /' | tee -a "$summary"
fi
if want build; then
  run_step build ninja -C "$build" -j "$jobs" || steps=""
fi

cd "$build" 2>/dev/null || steps=""
if want gpu; then
  # -VV: the CUDA tests print what they compared; a skip would show as "Skipped" here.
  run_step gpu ctest -L gpu -VV --timeout 600
  grep -E "SKIPPED|skipped|\[  PASSED  \]|\[  FAILED  \]|tests passed|Ran [0-9]+ test|OK \(|FAILED \(" "$out/gpu.log" \
    | sed 's/^/gpu: /' | tee -a "$summary"
fi
if want memcheck; then
  if command -v compute-sanitizer >/dev/null 2>&1; then
    memcheck() {
      local exe tool rc=0
      for exe in "$build/tests/kernels/attention_cuda_test" \
          "$build/tests/kernels/cluster_attention/kernels_cluster_cuda_test" \
          "$build/tests/kernels/sparse_decode/kernels_sparse_cuda_test" \
          "$build/tests/kernels/lora/kernels_lora_cuda_test"; do
        for tool in memcheck initcheck; do
          echo "== $tool $(basename "$exe")"
          timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 86 "$exe" --gtest_color=no \
            || rc=$?
        done
      done
      return $rc
    }
    saved=$status
    run_step memcheck memcheck
    grep -E "^== |ERROR SUMMARY|Device not supported|\[  (PASSED|FAILED) +\]|SKIPPED \] [0-9]+ test" \
      "$out/memcheck.log" | sed 's/^/memcheck: /' | tee -a "$summary"
    if grep -q "Device not supported" "$out/memcheck.log"; then
      # gVisor machines: the sanitizer cannot attach; that is the machine, not a finding.
      status=$saved
      note "memcheck: compute-sanitizer does not support this machine's runtime; not counted"
    fi
  else
    note "memcheck: compute-sanitizer not found, skipped"
  fi
fi
if want all; then
  run_step all ctest -LE gpu -j "$jobs" --output-on-failure --timeout 900
  grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)" "$out/all.log" | sed 's/^/all: /' | tee -a "$summary"
fi
if want bench; then
  bench() { "$build/bin/tessera" bench kernels --json > "$OUT/bench_kernels.json"; }
  run_step bench bench
  "$python" -c 'import json,sys; j=json.load(open(sys.argv[1])); print("bench: gpu copy GB/s", j.get("gpu_copy_bandwidth_gbs")); [print("bench:", r) for r in (j.get("cluster_attention_gpu") or [])]' \
    "$OUT/bench_kernels.json" 2>&1 | tee -a "$summary"
fi
note "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED)"
tar -czf "$OUT/logs.tar.gz" -C "$out" . && rm -rf "$out"
exit $status
