#!/usr/bin/env bash
# Downloads the Debian packages a GPU machine without a package registry needs to build and test
# Tessera (scripts/gpu_check.sh unpacks them with dpkg -x under /opt/deps), into the folder given
# (default .devdeps, kept out of git through .git/info/exclude). Run it on a machine with apt.
# The shared fetch-debs.sh list plus the shared libraries its -dev packages link against (libfmt9,
# libspdlog1.10: without them fmt's CMake config fails), libnuma1 (hwloc), the tokenizers' ICU and
# PCRE2, xxHash (header only), zstd and zlib with their libraries (CMake's targets name the files) and pkg-config. Where
# the machine has a library of the same soname, gpu_check.sh keeps the machine's for running
# programs. libc6, libstdc++6 and libudev1 are left to the machine: a second glibc on the library
# path would break every program.
set -euo pipefail
dest=${1:-.devdeps}
mkdir -p "$dest"
cd "$dest"
rm -f ./*.deb
apt-get download \
  libboost1.74-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 \
  googletest libgtest-dev libbenchmark-dev libbenchmark1debian \
  libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libpmix2 libhwloc15 libnuma1 \
  libevent-core-2.1-7 libevent-pthreads-2.1-7 libfabric1 libucx0 libpsm2-2 libpsm-infinipath1 \
  librdmacm1 libibverbs1 libnl-3-200 libnl-route-3-200 libmunge2 \
  libicu-dev libicu72 libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 \
  libxxhash-dev libzstd-dev libzstd1 zlib1g-dev zlib1g pkgconf pkgconf-bin libpkgconf3 pkg-config 2>&1 | grep -v '^Get:' || true
echo "$(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in $(pwd)"
