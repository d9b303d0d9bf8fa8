#!/usr/bin/env bash
# `cmake --install` into a fresh prefix, then a project outside the tree (examples/testing) that
# finds Tessera with find_package against that prefix alone, built here; its multi-rank tests are
# run by install_example_mpi. Also: the installed binary runs, libtessera_torch.so loads into torch,
# and the version file refuses a version Tessera is not.
#
# Usage: install_test.sh BUILD_DIR SOURCE_DIR "DEPENDENCY_PREFIX_PATH" [PYTHON] [CCACHE]
set -euo pipefail
build=$1
src=$2
dep_prefix=$3
python=${4:-}
ccache=${5:-}
work=$build/install-test
prefix=$work/prefix

rm -rf "$prefix" "$work/too-new"
t0=$(date +%s%N)
cmake --install "$build" --prefix "$prefix" >"$work.log" 2>&1 || {
  cat "$work.log"
  exit 1
}
echo "installed into $prefix in $((($(date +%s%N) - t0) / 1000000)) ms ($(du -sh "$prefix" | cut -f1))"
for f in bin/tessera lib/libtessera_torch.so lib/cmake/Tessera/TesseraConfig.cmake \
  lib/cmake/Tessera/TesseraConfigVersion.cmake lib/cmake/Tessera/TesseraTargets.cmake \
  include/tessera/testing/testing.h include/tessera/sharding/communicator.h \
  include/tessera/common/error.h; do
  [ -e "$prefix/$f" ] || {
    echo "FAIL: $prefix/$f was not installed"
    exit 1
  }
done

# The installed program runs from the prefix (its RPATH finds libtorch and MPI).
version=$(sed -n 's/^project(tessera VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
got=$("$prefix/bin/tessera" --version)
[ "$got" = "$version" ] || {
  echo "FAIL: installed tessera --version says '$got', the project is $version"
  exit 1
}
"$prefix/bin/tessera" info >/dev/null

# libtessera_torch.so registers Tessera's ops with the torch it was built against.
if [ -n "$python" ]; then
  "$python" - "$prefix/lib/libtessera_torch.so" <<'EOF'
import sys, torch
torch.ops.load_library(sys.argv[1])
for op in ("cluster_qk", "cluster_av", "cluster_attention"):
    getattr(torch.ops.tessera, op)  # raises when the op is not registered
print("libtessera_torch.so: tessera ops registered")
EOF
fi

# A version Tessera is not is refused by TesseraConfigVersion.cmake, before anything is loaded.
mkdir -p "$work/too-new"
cat >"$work/too-new/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(too_new LANGUAGES NONE)
find_package(Tessera 99.0 REQUIRED)
EOF
if cmake -S "$work/too-new" -B "$work/too-new/build" -DCMAKE_PREFIX_PATH="$prefix" \
  >"$work/too-new.log" 2>&1; then
  echo "FAIL: find_package(Tessera 99.0) succeeded"
  exit 1
fi
grep -q "not suitable\|version" "$work/too-new.log" || {
  cat "$work/too-new.log"
  exit 1
}

# The downstream project: only the prefix (and where Tessera's own dependencies live).
launcher=()
# (CMake passes "TESSERA_CCACHE-NOTFOUND" where the build found no ccache.)
if [ -n "$ccache" ] && [[ $ccache != *-NOTFOUND ]]; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER="$ccache")
fi
t0=$(date +%s%N)
cmake -S "$src/examples/testing" -B "$work/example" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$prefix;$dep_prefix" "${launcher[@]}" >"$work/example.log" 2>&1 || {
  cat "$work/example.log"
  exit 1
}
grep -q "$prefix/lib/cmake/Tessera" "$work/example/CMakeCache.txt" || {
  echo "FAIL: the example did not find Tessera in $prefix"
  grep Tessera_DIR "$work/example/CMakeCache.txt"
  exit 1
}
cmake --build "$work/example"
echo "downstream example configured and built in $((($(date +%s%N) - t0) / 1000000)) ms"
