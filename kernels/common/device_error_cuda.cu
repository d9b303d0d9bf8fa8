// Per-device error slots for the device-side metadata checks (kernels/common/device_error.h).
#include <cuda_runtime.h>

#include <mutex>
#include <new>
#include <vector>

#include "common/error.h"
#include "kernels/common/device_error.h"

namespace tessera::kernels {

namespace {

struct Entry {
  DeviceErrorSlot slot;               // the pointers kernels use
  DeviceErrorRecord* host = nullptr;  // the same record, as the host sees it
};

std::mutex entries_mu;
std::vector<Entry> entries;  // by device index; never freed (a kernel may still write)

void check(cudaError_t e, const char* what) {
  TESSERA_CHECK(e == cudaSuccess, what,
                " failed for the device error slot: ", cudaGetErrorString(e));
}

Entry& entry_locked(int device) {
  if (static_cast<size_t>(device) >= entries.size()) entries.resize(device + 1);
  Entry& s = entries[device];
  if (s.host != nullptr) return s;
  int previous = 0;
  check(cudaGetDevice(&previous), "cudaGetDevice");
  check(cudaSetDevice(device), "cudaSetDevice");
  void* host = nullptr;
  void* claimed = nullptr;
  void* mapped = nullptr;
  cudaError_t e = cudaHostAlloc(&host, sizeof(DeviceErrorRecord), cudaHostAllocMapped);
  if (e == cudaSuccess) e = cudaMalloc(&claimed, sizeof(int32_t));
  if (e == cudaSuccess) e = cudaMemset(claimed, 0, sizeof(int32_t));
  if (e == cudaSuccess) e = cudaHostGetDevicePointer(&mapped, host, 0);
  cudaSetDevice(previous);
  if (e != cudaSuccess) {
    if (host != nullptr) cudaFreeHost(host);
    if (claimed != nullptr) cudaFree(claimed);
    check(e, "cudaHostAlloc / cudaMalloc");
  }
  s.host = new (host) DeviceErrorRecord();
  s.slot.record = static_cast<DeviceErrorRecord*>(mapped);
  s.slot.claimed = static_cast<int32_t*>(claimed);
  return s;
}

}  // namespace

DeviceErrorSlot device_error_slot(int device) {
  TESSERA_CHECK(device >= 0, "device_error_slot: device must be >= 0, got ", device);
  std::lock_guard<std::mutex> lock(entries_mu);
  return entry_locked(device).slot;
}

void check_device_errors(int device) {
  DeviceErrorRecord* host = nullptr;
  int32_t* claimed = nullptr;
  {
    std::lock_guard<std::mutex> lock(entries_mu);
    if (device < 0 || static_cast<size_t>(device) >= entries.size()) return;
    host = entries[device].host;
    claimed = entries[device].slot.claimed;
  }
  if (host == nullptr || host->code == 0) return;
  // Re-arm before raising: the record is copied and cleared by raise_recorded_error, and the
  // claim is released on the device (ordered after the kernels already queued on the legacy
  // default stream), so a later failure is reported afresh.
  int previous = 0;
  cudaGetDevice(&previous);
  cudaSetDevice(device);
  cudaMemsetAsync(claimed, 0, sizeof(int32_t), nullptr);
  cudaSetDevice(previous);
  raise_recorded_error(host);
}

std::string cuda_error_text(int rc) {
  const auto e = static_cast<cudaError_t>(rc);
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

}  // namespace tessera::kernels
