#!/usr/bin/env bash
# Every program and library that links libtorch lists libstdc++.so.6 before it among its needed
# libraries. pip's libtorch.so and libtorch_cpu.so (torch 2.11) export a static copy of parts of
# libstdc++ (std::filesystem, the chrono time zones); a program that needs libtorch first binds
# those names to that copy, and std::filesystem::remove_all crashed through it (GPU machine, and
# pip's torch on a CPU machine). cmake/Dependencies.cmake links stdc++ ahead of torch.
#   libstdcxx_first_test.sh FILE...
set -euo pipefail
status=0
for f in "$@"; do
  mapfile -t needed < <(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  stdcxx=-1 torch=-1
  for i in "${!needed[@]}"; do
    case ${needed[i]} in
      libstdc++.so.*) [ $stdcxx -lt 0 ] && stdcxx=$i ;;
      libtorch*.so* | libc10*.so*) [ $torch -lt 0 ] && torch=$i ;;
    esac
  done
  name=$(basename "$f")
  if [ $torch -lt 0 ]; then
    echo "FAIL $name: links no libtorch (needed: ${needed[*]})"
    status=1
  elif [ $stdcxx -lt 0 ] || [ $stdcxx -gt $torch ]; then
    echo "FAIL $name: libstdc++ at ${stdcxx}, after ${needed[torch]} at $torch (needed: ${needed[*]})"
    status=1
  else
    echo "ok   $name: libstdc++.so.6 at $stdcxx, before ${needed[torch]} at $torch"
  fi
done
exit $status
