// Debug check that every rank is about to run the same collective. Before each operation the
// ranks exchange a fingerprint (operation, dtype, count, root, sequence number); the first
// mismatch is reported on every rank, instead of a hang or silently wrong data later. Costs one
// small all-gather per collective, so it is off unless TESSERA_COMM_DEBUG=1. Torch-free.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>

namespace tessera::sharding::mpi {

struct Fingerprint {
  char op[24] = {};     // "all_reduce", ...
  char dtype[16] = {};  // "float32", ...
  int64_t count = 0;    // elements this rank passes
  int32_t root = -1;    // broadcast root; -1 when the operation has none
  uint64_t seq = 0;     // the communicator's sequence number of this operation

  Fingerprint() = default;
  Fingerprint(const char* op_name, const char* dtype_name, int64_t count, int root, uint64_t seq);
  std::string str() const;  // "all_reduce(float32 x 1024, root -1)"
};

// True when TESSERA_COMM_DEBUG is set to a value other than "0" or empty.
bool collective_debug_enabled();

// Collective over `comm` (use a communicator of its own, so fingerprints never match data
// messages). Returns an empty string when every rank passed the same fingerprint; otherwise, on
// every rank, the same message naming the sequence number, the first rank that differs from rank 0
// and both fingerprints.
std::string compare_fingerprints(MPI_Comm comm, const Fingerprint& mine, const std::string& label);

}  // namespace tessera::sharding::mpi
