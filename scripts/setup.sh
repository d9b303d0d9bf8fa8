#!/usr/bin/env bash
# Installs the Debian packages Tessera needs, only those that are missing, so a repeated run is fast.
# Usage: scripts/setup.sh            (as root, or with sudo available)
set -euo pipefail

pkgs=(
  cmake ninja-build g++ make pkg-config git clang-format
  libtorch-dev libopenblas0-openmp
  libopenmpi-dev openmpi-bin
  libboost-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libzstd-dev libxxhash-dev
  libicu-dev libpcre2-dev
  # libFuzzer + ASan/UBSan runtimes for scripts/fuzz.sh (clang's; the main build stays g++).
  clang-14 libclang-rt-14-dev
  python3-torch python3-numpy python3-venv python3-pip curl
  zlib1g-dev python3-sklearn python3-matplotlib bible-kjv
  # A private SLURM cluster for the tests (scripts/slurm_cluster.sh): ~3.3 MB, ~7 s to install.
  slurmctld slurmd slurm-client munge
  # MPICH beside Open MPI (whose alternatives stay the default): srun --mpi=pmi2 needs an MPI with a
  # PMI-2 client, which Debian's Open MPI lacks (scripts/build_mpich.sh, slurm_pmi2_test).
  mpich libmpich-dev
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # libtorch's BLAS: prefer the OpenMP build of OpenBLAS (the pthread one is ~20x slower here).
  if [ -e /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 ]; then
    "${sudo_cmd[@]}" update-alternatives --set libblas.so.3-x86_64-linux-gnu \
      /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 >/dev/null 2>&1 || true
    "${sudo_cmd[@]}" update-alternatives --set liblapack.so.3-x86_64-linux-gnu \
      /usr/lib/x86_64-linux-gnu/openblas-openmp/liblapack.so.3 >/dev/null 2>&1 || true
  fi
else
  echo "[setup] all packages present"
fi
