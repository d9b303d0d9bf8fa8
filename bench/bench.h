// `tessera bench <name>`: benchmarks that report ratios against a baseline measured in the same
// process. Each benchmark is one function listed in bench/registry.cpp.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace tessera::sharding {
class Communicator;
}

namespace tessera::bench {

struct BenchOptions {
  bool json = false;   // print one JSON object on stdout (rank 0) instead of a table
  bool quick = false;  // smaller sizes, for CI
  sharding::Communicator* comm = nullptr;  // the world (MPI), for multi-rank benchmarks
  int rank = 0;
  int world_size = 1;
};

struct Benchmark {
  std::string name;  // "caches", "kernels", "comm"
  std::string help;
  // Runs on every rank; returns the exit code. Throws tessera::Error on bad input.
  std::function<int(const BenchOptions&)> run;
};

// Every benchmark `tessera bench` knows (bench/registry.cpp).
std::vector<Benchmark> benchmarks();

}  // namespace tessera::bench
