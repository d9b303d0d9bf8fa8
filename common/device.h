// What accelerators this process sees. Works (and says so) without CUDA compiled in or without a
// GPU present; the CUDA runtime is only touched when Tessera was built with it.
#pragma once

#include <string>
#include <vector>

namespace tessera {

struct DeviceReport {
  bool cuda_compiled = false;
  int count = 0;            // usable CUDA devices
  std::string status;       // why count is 0, or "ok"
  int runtime_version = 0;  // CUDART_VERSION-style integer, 0 when unknown
  int driver_version = 0;
  std::vector<std::string> names;  // "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"
};

DeviceReport query_devices();
std::string cuda_version_string(int v);  // 13000 -> "13.0"
// "2.27.7", or "not compiled" when Tessera was built without NCCL.
std::string nccl_version_string();

}  // namespace tessera
