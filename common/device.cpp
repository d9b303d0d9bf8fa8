#include "common/device.h"

#include <cstdio>

#ifdef TESSERA_WITH_CUDA
#include <cuda_runtime_api.h>
#endif
#ifdef TESSERA_WITH_NCCL
#include <nccl.h>
#endif

namespace tessera {

std::string cuda_version_string(int v) {
  if (v <= 0) return "none";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

std::string nccl_version_string() {
#ifdef TESSERA_WITH_NCCL
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
#else
  return "not compiled";
#endif
}

DeviceReport query_devices() {
  DeviceReport r;
#ifdef TESSERA_WITH_CUDA
  r.cuda_compiled = true;
  cudaRuntimeGetVersion(&r.runtime_version);
  cudaDriverGetVersion(&r.driver_version);
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    r.status = std::string("no usable GPU: cudaGetDeviceCount: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later CUDA calls report their own
    return r;
  }
  r.count = n;
  r.status = n > 0 ? "ok" : "no GPU present";
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                  static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
    r.names.emplace_back(buf);
  }
#else
  r.status = "built without CUDA: CPU only";
#endif
  return r;
}

}  // namespace tessera
