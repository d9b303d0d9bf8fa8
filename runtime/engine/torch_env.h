// libtorch process settings: intra-op threads per rank and version strings for `tessera info`.
#pragma once

#include <string>

namespace tessera::engine {

// Threads for libtorch: TESSERA_NUM_THREADS if set, else the machine's cores shared among the
// ranks on this node (at least 1). Returns the count applied.
int configure_torch_threads(int ranks_on_node);
int torch_threads();
std::string torch_version();
bool torch_cuda_compiled();

}  // namespace tessera::engine
