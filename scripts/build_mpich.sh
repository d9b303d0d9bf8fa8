#!/usr/bin/env bash
# Builds the tessera binary against Debian's MPICH into ${TESSERA_BUILD_DIR}-mpich (default:
# build-mpich/), beside the Open MPI build: srun --mpi=pmi2 starts only an MPI library with a
# PMI-2 client, and Debian's Open MPI has PMIx only (docs/slurm.md). The slurm_pmi2_test of the
# main build runs this binary. Only the `tessera` target is built; CUDA is compiled as in the main
# build. Exit status 77: MPICH is not installed (scripts/setup.sh installs it).
set -euo pipefail
source "$(dirname "$0")/env.sh"
build="${TESSERA_MPICH_BUILD_DIR:-$TESSERA_BUILD_DIR-mpich}"
if [ ! -x /usr/bin/mpicxx.mpich ]; then
  echo "build_mpich.sh: /usr/bin/mpicxx.mpich not found (apt-get install mpich libmpich-dev)" >&2
  exit 77
fi
if [ ! -f "$build/build.ninja" ] || [ $# -gt 0 ]; then
  cmake -S "$TESSERA_ROOT" -B "$build" -G Ninja -DTESSERA_BUILD_TESTS=OFF \
    -DMPI_CXX_COMPILER=/usr/bin/mpicxx.mpich -DMPI_C_COMPILER=/usr/bin/mpicc.mpich \
    -DMPIEXEC_EXECUTABLE=/usr/bin/mpiexec.mpich "$@"
fi
start=$(date +%s)
ninja -C "$build" -j "$(nproc)" tessera
echo "[build] MPICH build done in $(( $(date +%s) - start )) s: $build/bin/tessera"
