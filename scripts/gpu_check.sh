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
# Python); the README's main job (tiny model, 1 rank; 2 where 2 GPUs) on the GPU against the CPU; then the
# CUDA kernel tests again under compute-sanitizer (memcheck: out-of-bounds and
# misaligned accesses; initcheck: reads of device memory nobody wrote), where the machine has it
# and its runtime supports it; then `tessera bench kernels --json` (its GPU part); then every other test against this libtorch.
# A failing step is recorded and the next steps still run, so that one call brings back as much as
# possible. $OUT gets three files (the device tool brings back at most eight): summary.txt,
# bench_kernels.json and logs.tar.gz with every step's log. Exit status: 0 when every step passed.
#   TESSERA_GPU_STEPS="configure build gpu e2e memcheck bench all"  limits the steps (unpack always runs)
#   pybt (not in the default steps): one Python op test under cuda-gdb, for a native backtrace
#   TESSERA_GPU_ALL_REGEX=R  the `all` step runs only the tests whose names match R (ctest -R)
#   TESSERA_GPU_DEADLINE=N  every step ends within N seconds of the start (a step past it is cut
#     with `timeout` and recorded rc=124; a step with under 10 s left is skipped), so that a run
#     under the device tool's per-command limit still packs its logs; 0 (default): no deadline
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
steps=${TESSERA_GPU_STEPS:-configure build gpu e2e memcheck bench all}
deadline=${TESSERA_GPU_DEADLINE:-0}
started=$(date +%s)
python=${TESSERA_PYTHON:-$(command -v python3)}
jobs=$(nproc)
summary="$OUT/summary.txt"
: > "$summary"
status=0

note() { echo "$*" | tee -a "$summary"; }
want() { [[ " $steps " == *" $1 "* ]]; }
# left: seconds before the deadline (a large number without one).
left() {
  if [ "$deadline" -gt 0 ]; then echo $(( deadline - ($(date +%s) - started) )); else echo 100000; fi
}
# run_step NAME COMMAND...: runs it with its output in $out/NAME.log, records time and status.
run_step() {
  local name=$1
  shift
  local t0 rc remaining
  remaining=$(left)
  if [ "$remaining" -lt 10 ]; then
    note "$name: skipped, ${remaining} s before the deadline"
    status=1
    return 1
  fi
  t0=$(date +%s)
  if declare -F "$1" > /dev/null; then
    "$@" > "$out/$name.log" 2>&1  # a function of this script bounds its own commands with left
  else
    timeout -k 5 "$remaining" "$@" > "$out/$name.log" 2>&1
  fi
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
  [ $n -gt 0 ] || return 1
  # Absolute links in the packages (libz.so -> /lib/...) point into the prefix.
  local l t dev d=$prefix/usr/lib/$multiarch
  while IFS= read -r l; do
    t=$(readlink "$l")
    if [[ $t == /* ]]; then ln -sfn "$prefix$t" "$l"; fi
  done < <(find "$prefix" -type l)
  # A library the machine has under the same soname (zlib, zstd, PCRE2, ...): its copy serves
  # running programs (this one on LD_LIBRARY_PATH would shadow it for every program, python too);
  # the linker's libX.so goes to the package's file.
  for l in "$d"/lib*.so.*; do
    [ -L "$l" ] || continue
    n=${l##*/}
    [[ $n =~ \.so\.[0-9]+$ ]] || continue
    ldconfig -p | grep -q "^[[:space:]]*$n " || continue
    t=$(readlink -f "$l")
    for dev in "$d"/*.so; do
      if [ "$(readlink "$dev")" = "$n" ]; then ln -sfn "$t" "$dev"; fi
    done
    rm "$l"
    echo "the machine's $n serves programs"
  done
}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
if ! run_step unpack unpack; then
  note "no packages to unpack: run scripts/fetch_gpu_debs.sh .devdeps on a machine with apt and carry .devdeps"
fi
export OPAL_PREFIX=$prefix/usr
export PATH=$prefix/usr/bin:$PATH
export LD_LIBRARY_PATH=$prefix/usr/lib/$multiarch:$prefix/usr/lib/$multiarch/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# pkg-config (PCRE2) reads the prefix's .pc files; their /usr paths are taken inside the prefix.
export PKG_CONFIG_LIBDIR=$prefix/usr/lib/$multiarch/pkgconfig:$prefix/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$prefix PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
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
  # -k 0: what builds is tested even when one file fails (that failure is the build step's rc).
  run_step build ninja -C "$build" -j "$jobs" -k 0
fi

cd "$build" 2>/dev/null || steps=""
if want gpu; then
  # -VV: the CUDA tests print what they compared; a skip would show as "Skipped" here.
  run_step gpu ctest -L gpu -VV --timeout 600
  grep -E "SKIPPED|skipped|\[  PASSED  \]|\[  FAILED  \]|tests passed|Ran [0-9]+ test|OK \(|FAILED \(" "$out/gpu.log" \
    | sed 's/^/gpu: /' | tee -a "$summary"
fi
if want e2e; then
  # The README's main job on the GPU: tiny model, greedy, 1 rank on the device and 1 rank on the
  # CPU (CUDA_VISIBLE_DEVICES empty), and 2 ranks where there are 2 GPUs; each GPU run must say
  # it ran on cuda:0 and give the CPU run's token ids.
  e2e() {
    local bin=$build/bin/tessera rc=0 name gpus
    local args=(generate --model tiny --prompt "Tessera splits every layer across ranks" --max-tokens 32
                --json --no-progress)
    gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
    timeout 60 "$bin" info || rc=$?
    CUDA_VISIBLE_DEVICES= timeout 120 mpirun -np 1 -x CUDA_VISIBLE_DEVICES "$bin" "${args[@]}" \
      > "$out/e2e_cpu.json" || rc=$?
    local runs=(gpu1)
    timeout 120 mpirun -np 1 "$bin" "${args[@]}" > "$out/e2e_gpu1.json" || rc=$?
    if [ "${gpus:-0}" -ge 2 ]; then
      runs+=(gpu2)
      timeout 120 mpirun -np 2 "$bin" "${args[@]}" > "$out/e2e_gpu2.json" || rc=$?
    else
      echo "gpu2: one GPU here, 2 ranks would need 2 (NCCL needs a GPU per rank)"
    fi
    for name in "${runs[@]}"; do
      "$python" -c 'import json,sys
c=json.load(open(sys.argv[1])); g=json.load(open(sys.argv[2]))
a=c["requests"][0]; b=g["requests"][0]
same=sum(x==y for x,y in zip(a["output_ids"],b["output_ids"]))
print(sys.argv[3], "on", g.get("device"), "vs", c.get("device"), ":", same, "of", len(a["output_ids"]),
      "tokens equal;", repr(b["text"]))
sys.exit(0 if a["output_ids"]==b["output_ids"] and g.get("device")=="cuda:0" and c.get("device")=="cpu" else 1)' \
        "$out/e2e_cpu.json" "$out/e2e_$name.json" "$name" || rc=1
    done
    return $rc
  }
  run_step e2e e2e
  grep -E " on .* vs |^gpu2:|device|Traceback|rror" "$out/e2e.log" | head -n 20 | sed 's/^/e2e: /' | tee -a "$summary"
fi
if want pybt; then
  # A native backtrace of one Python op test (they died with SIGSEGV at their first error case on
  # the first H200 run): cuda-gdb, the machine's only debugger, also debugs host code.
  pybt() {
    local dbg
    dbg=$(command -v cuda-gdb || command -v gdb) || { echo "no cuda-gdb or gdb"; return 1; }
    PYTHONPATH=$root/tests/support timeout "$(left)" "$dbg" -batch -ex run -ex bt -ex "info sharedlibrary" \
      --args "$python" "$root/tests/kernels/paged_ops_test.py" \
      "$build/kernels/torch_library/libtessera_torch.so"
  }
  run_step pybt pybt
  grep -E "^#[0-9]+ |signal|Ran [0-9]+ test|^OK|FAILED" "$out/pybt.log" | head -n 30 | sed 's/^/pybt: /' \
    | tee -a "$summary"
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
          local budget
          budget=$(left)
          [ "$budget" -gt 300 ] && budget=300
          [ "$budget" -lt 5 ] && { echo "== deadline: $tool $(basename "$exe") not run"; rc=124; continue; }
          timeout "$budget" compute-sanitizer --tool "$tool" --error-exitcode 86 "$exe" --gtest_color=no \
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
if want bench; then
  bench() { timeout -k 5 "$(left)" "$build/bin/tessera" bench kernels --json > "$OUT/bench_kernels.json"; }
  run_step bench bench
  "$python" -c 'import json,sys; j=json.load(open(sys.argv[1])); print("bench: gpu copy GB/s", j.get("gpu_copy_bandwidth_gbs")); [print("bench:", r) for r in (j.get("cluster_attention_gpu") or [])]' \
    "$OUT/bench_kernels.json" 2>&1 | tee -a "$summary"
fi
if want all; then
  run_step all ctest -LE gpu ${TESSERA_GPU_ALL_REGEX:+-R "$TESSERA_GPU_ALL_REGEX"} -j "$jobs" \
    --output-on-failure --timeout 900
  grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)" "$out/all.log" | sed 's/^/all: /' | tee -a "$summary"
fi
note "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED)"
tar -czf "$OUT/logs.tar.gz" -C "$out" . && rm -rf "$out"
exit $status
