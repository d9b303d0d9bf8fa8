#include "sharding/mpi/collective_check.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/error.h"

namespace tessera::sharding::mpi {

Fingerprint::Fingerprint(const char* op_name, const char* dtype_name, int64_t count_, int root_,
                         uint64_t seq_)
    : count(count_), root(root_), seq(seq_) {
  std::strncpy(op, op_name, sizeof op - 1);
  std::strncpy(dtype, dtype_name, sizeof dtype - 1);
}

std::string Fingerprint::str() const {
  return std::string(op) + "(" + dtype + " x " + std::to_string(count) + ", root " +
         std::to_string(root) + ")";
}

bool collective_debug_enabled() {
  const char* v = std::getenv("TESSERA_COMM_DEBUG");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

std::string compare_fingerprints(MPI_Comm comm, const Fingerprint& mine, const std::string& label) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  std::vector<Fingerprint> all(static_cast<size_t>(size));
  const int rc = MPI_Allgather(&mine, sizeof(Fingerprint), MPI_BYTE, all.data(),
                               sizeof(Fingerprint), MPI_BYTE, comm);
  TESSERA_CHECK(rc == MPI_SUCCESS, "MPI_Allgather of collective fingerprints failed (code ", rc,
                ")");
  const Fingerprint& ref = all[0];
  for (int r = 1; r < size; ++r) {
    const Fingerprint& f = all[static_cast<size_t>(r)];
    const bool same = std::strncmp(f.op, ref.op, sizeof f.op) == 0 &&
                      std::strncmp(f.dtype, ref.dtype, sizeof f.dtype) == 0 &&
                      f.count == ref.count && f.root == ref.root && f.seq == ref.seq;
    if (same) continue;
    return "collective mismatch on communicator '" + label + "' at sequence #" +
           std::to_string(ref.seq) + ": rank 0 called " + ref.str() + " but rank " +
           std::to_string(r) + " called " + f.str() +
           (f.seq != ref.seq ? " at its sequence #" + std::to_string(f.seq) : std::string());
  }
  return {};
}

}  // namespace tessera::sharding::mpi
