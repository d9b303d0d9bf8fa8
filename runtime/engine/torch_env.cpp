#include "runtime/engine/torch_env.h"

#include <ATen/Parallel.h>
#include <torch/types.h>
#include <torch/version.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/error.h"

namespace tessera::engine {

int configure_torch_threads(int ranks_on_node) {
  int threads = 0;
  if (const char* env = std::getenv("TESSERA_NUM_THREADS"); env && *env) {
    const char* end = env + std::strlen(env);
    const auto [ptr, ec] = std::from_chars(env, end, threads);
    TESSERA_CHECK(ec == std::errc() && ptr == end && threads > 0, "TESSERA_NUM_THREADS='", env,
                  "' must be a positive integer");
  } else {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    threads = std::max(1, cores / std::max(1, ranks_on_node));
  }
  at::set_num_threads(threads);
  return threads;
}

int torch_threads() { return at::get_num_threads(); }

std::string torch_version() { return TORCH_VERSION; }

bool torch_cuda_compiled() {
#ifdef TESSERA_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace tessera::engine
