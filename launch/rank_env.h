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

// Device choice: local rank modulo the devices seen; -1 (CPU) when there are none.
int choose_device(const RankInfo& info, int device_count);

}  // namespace tessera::launch
