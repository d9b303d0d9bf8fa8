// Counter-based attention dropout shared by every cluster attention implementation: the keep
// decision for a weight is a pure function of (seed, its flat index), so the forward and the
// backward (and the CPU and CUDA versions) draw the very same mask without storing it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TESSERA_DROPOUT_HD __host__ __device__ __forceinline__
#else
#define TESSERA_DROPOUT_HD inline
#endif

namespace tessera::kernels {

// splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
TESSERA_DROPOUT_HD uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Whether attention weight `flat` survives dropout with probability p. flat is the index of the
// weight in [B, H, N, M + 1] (slot M being the blank token).
TESSERA_DROPOUT_HD bool dropout_keep(uint64_t seed, uint64_t flat, float p) {
  const uint64_t r = mix64(mix64(seed) ^ flat);
  const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // 24 bits -> [0, 1)
  return u >= p;
}

}  // namespace tessera::kernels
