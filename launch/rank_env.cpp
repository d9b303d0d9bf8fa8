#include "launch/rank_env.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>

#include "common/error.h"

namespace tessera::launch {

namespace {

struct VarNames {
  Launcher launcher;
  const char* rank;
  const char* size;
  const char* local_rank;  // may be null
  const char* local_size;  // may be null
  const char* node_id;     // may be null
  const char* marker;      // a variable whose presence alone says the launcher is there
};

// Inner-most launcher first (see discover_rank).
constexpr VarNames kLaunchers[] = {
    {Launcher::kTorchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
     "TORCHELASTIC_RUN_ID"},
    {Launcher::kOpenMPI, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", nullptr, nullptr},
    {Launcher::kPMI, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", nullptr,
     nullptr},
    {Launcher::kSlurm, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", nullptr, "SLURM_NODEID",
     "SLURM_STEP_ID"},
};

std::optional<std::string> get(const EnvMap& env, const char* name) {
  if (name == nullptr) return std::nullopt;
  auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  return it->second;
}

int parse_int(const char* name, const std::string& value, int min_value) {
  int out = 0;
  const char* begin = value.data();
  const char* end = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(begin, end, out);
  TESSERA_CHECK(ec == std::errc() && ptr == end && !value.empty(), "environment variable ", name,
                "='", value, "' is not an integer");
  TESSERA_CHECK(out >= min_value, "environment variable ", name, "=", value,
                " must be >= ", min_value);
  return out;
}

std::optional<int> get_int(const EnvMap& env, const char* name, int min_value) {
  auto v = get(env, name);
  if (!v) return std::nullopt;
  return parse_int(name, *v, min_value);
}

bool present(const EnvMap& env, const VarNames& names) {
  return get(env, names.rank) || get(env, names.size);
}

RankInfo read_launcher(const EnvMap& env, const VarNames& n) {
  auto rank = get_int(env, n.rank, 0);
  auto size = get_int(env, n.size, 1);
  TESSERA_CHECK(rank && size, launcher_name(n.launcher),
                " variables are incomplete: ", rank ? n.size : n.rank, " is missing while ",
                rank ? n.rank : n.size, " is set");
  TESSERA_CHECK(*rank < *size, launcher_name(n.launcher),
                " variables contradict each other: ", n.rank, "=", *rank, " is not below ", n.size,
                "=", *size);
  RankInfo info;
  info.launcher = n.launcher;
  info.rank = *rank;
  info.world_size = *size;
  info.source = std::string(n.rank) + "=" + std::to_string(*rank) + ", " + n.size + "=" +
                std::to_string(*size);
  auto local_rank = get_int(env, n.local_rank, 0);
  auto local_size = get_int(env, n.local_size, 1);
  info.local_rank = local_rank.value_or(info.rank);
  // Without a local size, assume one node unless a local rank says otherwise.
  info.local_size = local_size.value_or(info.world_size);
  if (local_rank)
    info.source += std::string(", ") + n.local_rank + "=" + std::to_string(*local_rank);
  if (local_size)
    info.source += std::string(", ") + n.local_size + "=" + std::to_string(*local_size);
  TESSERA_CHECK(info.local_size <= info.world_size, launcher_name(n.launcher),
                " variables contradict each other: ", n.local_size, "=", info.local_size,
                " exceeds ", n.size, "=", info.world_size);
  TESSERA_CHECK(info.local_rank < info.local_size, launcher_name(n.launcher),
                " variables contradict each other: local rank ", info.local_rank,
                " is not below local size ", info.local_size, " (", info.source, ")");
  info.node_id = get_int(env, n.node_id, 0).value_or(n.node_id ? 0 : -1);
  if (n.launcher == Launcher::kOpenMPI || n.launcher == Launcher::kPMI) {
    info.node_id = -1;  // these launchers do not export a node index; MPI derives it
  }
  return info;
}

}  // namespace

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone:
      return "none";
    case Launcher::kOpenMPI:
      return "mpirun (OpenMPI)";
    case Launcher::kPMI:
      return "PMI (MPICH/hydra)";
    case Launcher::kSlurm:
      return "srun (SLURM)";
    case Launcher::kTorchrun:
      return "torchrun";
  }
  return "?";
}

RankInfo discover_rank(const EnvMap& env) {
  std::optional<RankInfo> chosen;
  std::vector<Launcher> outer;
  for (const auto& names : kLaunchers) {
    if (!present(env, names)) continue;
    if (names.launcher == Launcher::kSlurm && (chosen || !get(env, names.marker))) {
      // sbatch's batch step (no SLURM_STEP_ID) or srun around an inner launcher: SLURM_PROCID
      // then describes the allocation, not this process.
      outer.push_back(names.launcher);
      continue;
    }
    RankInfo info = read_launcher(env, names);
    if (!chosen) {
      chosen = info;
      continue;
    }
    // Two MPI-level launchers describing one process: they must agree.
    if (info.world_size == chosen->world_size) {
      TESSERA_CHECK(info.rank == chosen->rank,
                    "launcher variables disagree: ", launcher_name(chosen->launcher), " says rank ",
                    chosen->rank, " (", chosen->source, ") but ", launcher_name(info.launcher),
                    " says rank ", info.rank, " (", info.source, ")");
    }
    outer.push_back(names.launcher);
  }
  if (!chosen) return RankInfo{.source = "no launcher variables: a single process"};
  chosen->outer = std::move(outer);
  return *chosen;
}

EnvMap process_env() {
  EnvMap env;
  for (const auto& n : kLaunchers) {
    for (const char* name : {n.rank, n.size, n.local_rank, n.local_size, n.node_id, n.marker}) {
      if (name == nullptr) continue;
      if (const char* v = std::getenv(name)) env[name] = v;
    }
  }
  // What srun's MPI plugin left for the step (srun_pmi_error).
  for (const char* name :
       {"SLURM_MPI_TYPE", "SLURM_NODELIST", "PMIX_RANK", "PMIX_NAMESPACE", "PMI_FD"}) {
    if (const char* v = std::getenv(name)) env[name] = v;
  }
  return env;
}

std::string srun_pmi_error(const EnvMap& env, const std::vector<std::string>& mpi_pmi_clients) {
  // Only a task that srun started itself (Open MPI's own test: a step's SLURM_NODELIST): not
  // sbatch's batch shell (a single process, no PMI needed), not a rank that mpirun started inside
  // the allocation.
  if (!get(env, "SLURM_STEP_ID") || !get(env, "SLURM_NODELIST") ||
      get(env, "OMPI_COMM_WORLD_RANK") || mpi_pmi_clients.empty()) {
    return {};
  }
  const auto has = [&](const char* client) {
    return std::find(mpi_pmi_clients.begin(), mpi_pmi_clients.end(), client) !=
           mpi_pmi_clients.end();
  };
  const std::string type = get(env, "SLURM_MPI_TYPE").value_or("none");
  std::string what;  // the PMI srun offers this task
  if (get(env, "PMIX_RANK") || get(env, "PMIX_NAMESPACE")) {
    if (has("pmix")) return {};
    what = "srun offers PMIx (--mpi=" + type + ")";
  } else if (get(env, "PMI_FD")) {
    if (has("pmi2") || has("pmi1")) return {};
    what = "srun offers PMI-2 (--mpi=" + type + ")";
  } else {
    if (has("pmi1")) return {};
    what = "srun offers no PMI server (--mpi=" + type + ")";
  }
  std::string clients;
  for (const auto& c : mpi_pmi_clients) clients += (clients.empty() ? "" : ", ") + c;
  return "MPI cannot start in this srun step: " + what +
         " and the MPI library Tessera is built with has a client only for " + clients + "; " +
         (has("pmix") ? "run srun --mpi=pmix (srun --mpi=list shows what this SLURM offers)"
                      : "run mpirun inside the allocation");
}

void check_against_mpi(const RankInfo& info, int mpi_rank, int mpi_world_size) {
  if (info.launcher == Launcher::kNone) return;
  if (info.launcher == Launcher::kTorchrun && mpi_world_size == 1 && info.world_size > 1) {
    TESSERA_FAIL("torchrun variables say rank ", info.rank, " of ", info.world_size, " (",
                 info.source,
                 ") but MPI sees a world of 1: Tessera's collectives run over MPI, "
                 "so launch with mpirun or srun (see README, 'Launching')");
  }
  TESSERA_CHECK(info.rank == mpi_rank && info.world_size == mpi_world_size,
                "launcher variables disagree with MPI: ", launcher_name(info.launcher),
                " says rank ", info.rank, " of ", info.world_size, " (", info.source,
                ") but MPI reports rank ", mpi_rank, " of ", mpi_world_size);
}

int choose_device(const RankInfo& info, int device_count) {
  if (device_count <= 0) return -1;
  return info.local_rank % device_count;
}

}  // namespace tessera::launch
