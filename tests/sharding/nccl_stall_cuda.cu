// A kernel that keeps a stream busy for a while: the NCCL tests queue a collective behind it to
// stall that collective without a misbehaving peer.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

__global__ void spin_kernel(uint64_t ns) {
  uint64_t start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

}  // namespace

// Queues one single-thread kernel that spins for `ms` milliseconds on `stream`; returns the
// launch's cudaError_t.
int tessera_test_stall_stream(double ms, void* stream) {
  spin_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<uint64_t>(ms * 1e6));
  return static_cast<int>(cudaGetLastError());
}
