// Rank discovery from launcher environment variables (mpirun, srun, MPICH/PMI, torchrun), as a
// pure function of the environment so every launcher's table can be tested without launching.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tessera::launch {

using EnvMap = std::map<std::string, std::string>;

enum class Launcher { kNone, kOpenMPI, kPMI, kSlurm, kTorchrun };
const char* launcher_name(Launcher launcher);

struct RankInfo {
  Launcher launcher = Launcher::kNone;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  int node_id = 0;  // -1 when the launcher does not say
  // The variables the values came from, for messages: "OMPI_COMM_WORLD_RANK=1, ...".
  std::string source;
  // Launchers whose variables were present but ignored because an inner launcher started this
  // process (mpirun inside an sbatch allocation, torchrun under srun).
  std::vector<Launcher> outer;

  bool operator==(const RankInfo&) const = default;
};

// Reads the launcher variables. Precedence is inner-most launcher first: torchrun (spawns its
// workers itself), then OpenMPI, then PMI (MPICH/hydra, Intel MPI), then SLURM (srun). Throws
// tessera::Error naming the variable and value when a value is not an integer, a partner variable
// is missing, or the values contradict each other (rank >= world size, local rank >= local size).
RankInfo discover_rank(const EnvMap& env);

// The process environment as an EnvMap (only the variables discover_rank reads).
EnvMap process_env();

// Cross-checks the launcher's view against MPI's own. Throws naming both when they disagree.
void check_against_mpi(const RankInfo& info, int mpi_rank, int mpi_world_size);

// Under srun, an MPI library learns its rank from the PMI server that srun starts for the step
// (--mpi=pmix: PMIx; --mpi=pmi2: PMI-2; --mpi=none: none), and Open MPI aborts every task with a
// page of text when it has no client for it (Debian's Open MPI 4.1 has PMIx only). Given the
// process environment and the PMI clients of the MPI library ("pmix", "pmi1", "pmi2"; empty when
// unknown), returns the one-line error to report before MPI starts, or "" when it can start.
std::string srun_pmi_error(const EnvMap& env, const std::vector<std::string>& mpi_pmi_clients);

// Device choice: local rank modulo the devices seen; -1 (CPU) when there are none.
int choose_device(const RankInfo& info, int device_count);

}  // namespace tessera::launch
