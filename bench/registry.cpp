#include "bench/bench.h"

namespace tessera::bench {

// One declaration and one line per benchmark (each defined in its own bench/<name>_bench.cpp).

std::vector<Benchmark> benchmarks() {
  std::vector<Benchmark> all;
  return all;
}

}  // namespace tessera::bench
