#include "bench/bench.h"

namespace tessera::bench {

// One declaration and one line per benchmark (each defined in its own bench/<name>_bench.cpp).
Benchmark caches_benchmark();
Benchmark kernels_benchmark();
Benchmark paged_decode_benchmark();
Benchmark comm_benchmark();
Benchmark sp_decode_benchmark();
Benchmark sparse_benchmark();
Benchmark scheduler_benchmark();
Benchmark engine_benchmark();
Benchmark lora_benchmark();
Benchmark int8_benchmark();
Benchmark tokenizers_benchmark();
Benchmark train_benchmark();
Benchmark serve_benchmark();
Benchmark soak_benchmark();
Benchmark guided_benchmark();

std::vector<Benchmark> benchmarks() {
  std::vector<Benchmark> all;
  all.push_back(caches_benchmark());
  all.push_back(kernels_benchmark());
  all.push_back(paged_decode_benchmark());
  all.push_back(comm_benchmark());
  all.push_back(sp_decode_benchmark());
  all.push_back(sparse_benchmark());
  all.push_back(scheduler_benchmark());
  all.push_back(engine_benchmark());
  all.push_back(lora_benchmark());
  all.push_back(int8_benchmark());
  all.push_back(tokenizers_benchmark());
  all.push_back(train_benchmark());
  all.push_back(serve_benchmark());
  all.push_back(soak_benchmark());
  all.push_back(guided_benchmark());
  return all;
}

}  // namespace tessera::bench
