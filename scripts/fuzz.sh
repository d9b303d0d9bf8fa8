#!/usr/bin/env bash
# libFuzzer with AddressSanitizer + UBSan over Tessera's parsers (tests/fuzz/, one target per
# parser; seeds and past crashes in tests/fuzz_corpus/<target>/). Builds the targets with clang in
# their own build folder (build-fuzz/; the main build stays g++), then runs them.
#   scripts/fuzz.sh --list                      names the targets
#   scripts/fuzz.sh TARGET SECONDS [flags...]   one target for SECONDS (0 = no time limit; extra
#                                               libFuzzer flags such as -runs=10000000 follow)
#   scripts/fuzz.sh --all SECONDS [JOBS]        every target for SECONDS, JOBS at a time 
#   scripts/fuzz.sh --ci [SECONDS]              CI: builds, then every target for SECONDS (default
#                                               30), 2 at a time (14 targets: ~4 minutes)
#   scripts/fuzz.sh --build                     builds only
# TESSERA_FUZZ_NO_BUILD=1 runs what is built; TESSERA_FUZZ_BIN_DIR names another folder of them.
# The growing corpus lives in build-fuzz/corpus/<target>/ (the seeds are read, never written);
# a crash, leak, UBSan report, timeout (10 s) or out-of-memory (2 GB) leaves its input in
# build-fuzz/artifacts/<target>/ and fails the run. Make it a regression: copy it to
# tests/fuzz_corpus/<target>/crash-<what> and add a test to tests/fuzz/regression_test.cpp.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${TESSERA_FUZZ_BUILD_DIR:-$src/build-fuzz}
cc=${TESSERA_FUZZ_CC:-clang-14}
cxx=${TESSERA_FUZZ_CXX:-clang++-14}

# One target per tests/fuzz/<name>_fuzz.cpp (tests/fuzz/CMakeLists.txt lists the same names).
targets() { for f in "$src"/tests/fuzz/*_fuzz.cpp; do basename "$f" _fuzz.cpp; done; }

build_targets() {
  [ -n "${TESSERA_FUZZ_NO_BUILD:-}" ] && return 0  # run what is built (long runs beside a build)
  if ! command -v "$cxx" >/dev/null; then
    echo "fuzz.sh: $cxx not found (scripts/setup.sh installs clang-14 and libclang-rt-14-dev)" >&2
    exit 2
  fi
  local san="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
  if [ ! -f "$build/build.ninja" ]; then
    # Assertions on (no NDEBUG: nlohmann's and the standard library's checks stay), -O1.
    CC=$cc CXX=$cxx cmake -S "$src" -B "$build" -G Ninja -DTESSERA_FUZZ=ON \
      -DTESSERA_ENABLE_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" \
      "-DCMAKE_CXX_FLAGS=$san -fno-omit-frame-pointer" >/dev/null
  fi
  local all=() t
  for t in $(targets); do all+=("tessera_fuzz_$t"); done
  local log="$build/build.log"
  if ! ninja -C "$build" -j"${TESSERA_FUZZ_JOBS:-$(nproc)}" "${all[@]}" > "$log" 2>&1; then
    grep -v '^\[' "$log" | head -n 60
    echo "fuzz.sh: the build failed (log: $log)" >&2
    exit 1
  fi
}

# run TARGET SECONDS [flags...]: prints one summary line; returns libFuzzer's status.
run() {
  local t=$1 secs=$2
  shift 2
  local exe="${TESSERA_FUZZ_BIN_DIR:-$build/tests/fuzz}/tessera_fuzz_$t"
  [ -x "$exe" ] || { echo "fuzz.sh: unknown target '$t' (--list names them)" >&2; return 2; }
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t"
  local dict=()
  case $t in
    http_request) cat "$src/tests/fuzz/dicts/http.dict" "$src/tests/fuzz/dicts/json.dict" \
                    > "$build/artifacts/$t.dict"; dict=(-dict="$build/artifacts/$t.dict") ;;
    model_config|lora_config|safetensors|safetensors_index|openai_request|delta|tokenizer_json|chat_messages)
      dict=(-dict="$src/tests/fuzz/dicts/json.dict") ;;
    chat_template) dict=(-dict="$src/tests/fuzz/dicts/jinja.dict") ;;
    tool_calls) cat "$src/tests/fuzz/dicts/tool_calls.dict" "$src/tests/fuzz/dicts/json.dict" \
                  > "$build/artifacts/$t.dict"; dict=(-dict="$build/artifacts/$t.dict") ;;
    train_config) dict=(-dict="$src/tests/fuzz/dicts/train_config.dict") ;;
  esac
  # Seeds beyond tests/fuzz_corpus/<target>/ (read, never written).
  local seeds=("$src/tests/fuzz_corpus/$t")
  [ "$t" = tokenizer_json ] && seeds+=("$src/tests/fuzz/tokenizers")
  local limit=()
  [ "$secs" != 0 ] && limit=(-max_total_time="$secs")
  local log="$build/artifacts/$t.log" rc=0
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$exe" "$build/corpus/$t" "${seeds[@]}" "${dict[@]}" "${limit[@]}" \
      -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$t/" "$@" > "$log" 2>&1 || rc=$?
  local runs corp
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1 || true)
  corp=$(grep -Eo 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
  if [ $rc = 0 ]; then
    echo "[fuzz] $t: ${runs:-?} runs, corpus ${corp:-?} (files/bytes), no crash"
  else
    echo "[fuzz] $t: FAILED (status $rc) after ${runs:-?} runs; input in $build/artifacts/$t/, log $log"
    grep -E 'ERROR: |runtime error:|fuzz property failed|SUMMARY' "$log" | head -n 5 | sed 's/^/    /' || tail -n 3 "$log"
  fi
  return $rc
}

case "${1:-}" in
  --list) targets ;;
  --build) build_targets ;;
  --ci) exec "$0" --all "${2:-30}" 2 ;;
  --all)
    secs=${2:?usage: fuzz.sh --all SECONDS [JOBS]}
    jobs=${3:-1}
    build_targets
    status=0
    pids=()
    for t in $(targets); do
      run "$t" "$secs" & pids+=($!)
      if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}" || status=1; pids=("${pids[@]:1}"); fi
    done
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    exit $status
    ;;
  ""|-h|--help) sed -n '2,18p' "$0"; exit 2 ;;
  *)
    t=$1
    secs=${2:?usage: fuzz.sh TARGET SECONDS [libFuzzer flags...]}
    shift 2
    build_targets
    run "$t" "$secs" "$@"
    ;;
esac
