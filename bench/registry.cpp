#include "bench/bench.h"

namespace tessera::bench {

// One declaration and one line per benchmark (each defined in its own bench/<name>_bench.cpp).
Benchmark kernels_benchmark();

std::vector<Benchmark> benchmarks() {
  std::vector<Benchmark> all;
  all.push_back(kernels_benchmark());
  return all;
}

}  // namespace tessera::bench
