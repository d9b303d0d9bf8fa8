// Rank discovery, table by table: each launcher's variables, nested launchers, and the
// disagreements and malformed values that must produce a clear error.
#include "launch/rank_env.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace tessera::launch {
namespace {

struct Case {
  const char* name;
  EnvMap env;
  Launcher launcher;
  int rank, world, local_rank, local_size, node;
};

class Discovery : public ::testing::TestWithParam<Case> {};

TEST_P(Discovery, ReadsLauncherVariables) {
  const Case& c = GetParam();
  const RankInfo r = discover_rank(c.env);
  EXPECT_EQ(r.launcher, c.launcher) << launcher_name(r.launcher);
  EXPECT_EQ(r.rank, c.rank);
  EXPECT_EQ(r.world_size, c.world);
  EXPECT_EQ(r.local_rank, c.local_rank);
  EXPECT_EQ(r.local_size, c.local_size);
  EXPECT_EQ(r.node_id, c.node);
}

INSTANTIATE_TEST_SUITE_P(
    Launchers, Discovery,
    ::testing::Values(
        Case{"none", {}, Launcher::kNone, 0, 1, 0, 1, 0},
        Case{"openmpi",
             {{"OMPI_COMM_WORLD_RANK", "3"},
              {"OMPI_COMM_WORLD_SIZE", "8"},
              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
              {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}},
             Launcher::kOpenMPI,
             3,
             8,
             1,
             2,
             -1},
        Case{"openmpi_no_local",
             {{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}},
             Launcher::kOpenMPI,
             1,
             2,
             1,
             2,
             -1},
        Case{"srun",
             {{"SLURM_PROCID", "5"},
              {"SLURM_NTASKS", "8"},
              {"SLURM_LOCALID", "1"},
              {"SLURM_NODEID", "2"},
              {"SLURM_STEP_ID", "0"}},
             Launcher::kSlurm,
             5,
             8,
             1,
             8,
             2},
        Case{"pmi_hydra",
             {{"PMI_RANK", "2"},
              {"PMI_SIZE", "4"},
              {"MPI_LOCALRANKID", "0"},
              {"MPI_LOCALNRANKS", "1"}},
             Launcher::kPMI,
             2,
             4,
             0,
             1,
             -1},
        Case{"torchrun",
             {{"RANK", "6"},
              {"WORLD_SIZE", "8"},
              {"LOCAL_RANK", "2"},
              {"LOCAL_WORLD_SIZE", "4"},
              {"GROUP_RANK", "1"},
              {"TORCHELASTIC_RUN_ID", "job"}},
             Launcher::kTorchrun,
             6,
             8,
             2,
             4,
             1},
        // sbatch's batch step: SLURM variables without SLURM_STEP_ID describe the allocation.
        Case{"sbatch_script_alone",
             {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}},
             Launcher::kNone,
             0,
             1,
             0,
             1,
             0},
        // mpirun inside an sbatch/srun allocation: OpenMPI's variables describe this process.
        Case{"mpirun_inside_slurm",
             {{"OMPI_COMM_WORLD_RANK", "3"},
              {"OMPI_COMM_WORLD_SIZE", "4"},
              {"SLURM_PROCID", "0"},
              {"SLURM_NTASKS", "1"},
              {"SLURM_STEP_ID", "0"}},
             Launcher::kOpenMPI,
             3,
             4,
             3,
             4,
             -1},
        // torchrun started per node by srun: torchrun's global rank wins over SLURM_PROCID.
        Case{"torchrun_under_srun",
             {{"RANK", "5"},
              {"WORLD_SIZE", "8"},
              {"LOCAL_RANK", "1"},
              {"LOCAL_WORLD_SIZE", "4"},
              {"GROUP_RANK", "1"},
              {"SLURM_PROCID", "1"},
              {"SLURM_NTASKS", "2"},
              {"SLURM_STEP_ID", "0"}},
             Launcher::kTorchrun,
             5,
             8,
             1,
             4,
             1}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Discovery, OuterLaunchersAreRecorded) {
  const RankInfo r = discover_rank({{"OMPI_COMM_WORLD_RANK", "0"},
                                    {"OMPI_COMM_WORLD_SIZE", "2"},
                                    {"SLURM_PROCID", "0"},
                                    {"SLURM_NTASKS", "1"},
                                    {"SLURM_STEP_ID", "0"}});
  ASSERT_EQ(r.outer.size(), 1u);
  EXPECT_EQ(r.outer[0], Launcher::kSlurm);
}

struct BadCase {
  const char* name;
  EnvMap env;
  std::vector<std::string> must_mention;
};

class DiscoveryErrors : public ::testing::TestWithParam<BadCase> {};

TEST_P(DiscoveryErrors, ClearErrorNamingVariableAndValue) {
  const BadCase& c = GetParam();
  try {
    discover_rank(c.env);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.message();
    for (const auto& s : c.must_mention) EXPECT_NE(msg.find(s), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, DiscoveryErrors,
    ::testing::Values(
        BadCase{"not_an_integer",
                {{"OMPI_COMM_WORLD_RANK", "one"}, {"OMPI_COMM_WORLD_SIZE", "2"}},
                {"OMPI_COMM_WORLD_RANK", "'one'", "not an integer"}},
        BadCase{"trailing_garbage",
                {{"SLURM_PROCID", "1x"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "0"}},
                {"SLURM_PROCID", "'1x'"}},
        BadCase{"negative_rank", {{"PMI_RANK", "-1"}, {"PMI_SIZE", "2"}}, {"PMI_RANK=-1", ">= 0"}},
        BadCase{"zero_world", {{"RANK", "0"}, {"WORLD_SIZE", "0"}}, {"WORLD_SIZE=0", ">= 1"}},
        BadCase{"rank_not_below_size",
                {{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}},
                {"OMPI_COMM_WORLD_RANK=4", "OMPI_COMM_WORLD_SIZE=4"}},
        BadCase{"missing_partner", {{"RANK", "1"}}, {"WORLD_SIZE is missing", "RANK"}},
        BadCase{
            "local_rank_too_big",
            {{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}},
            {"local rank 2", "local size 2"}},
        BadCase{"local_size_exceeds_world",
                {{"OMPI_COMM_WORLD_RANK", "0"},
                 {"OMPI_COMM_WORLD_SIZE", "2"},
                 {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"}},
                {"OMPI_COMM_WORLD_LOCAL_SIZE=3", "OMPI_COMM_WORLD_SIZE=2"}},
        // Two MPI-level launchers describing the same world differently.
        BadCase{"openmpi_and_pmi_disagree",
                {{"OMPI_COMM_WORLD_RANK", "1"},
                 {"OMPI_COMM_WORLD_SIZE", "4"},
                 {"PMI_RANK", "2"},
                 {"PMI_SIZE", "4"}},
                {"disagree", "rank 1", "rank 2", "PMI_RANK=2"}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(CheckAgainstMpi, AgreementPasses) {
  RankInfo r = discover_rank({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  EXPECT_NO_THROW(check_against_mpi(r, 1, 2));
  EXPECT_NO_THROW(check_against_mpi(discover_rank({}), 0, 1));
}

TEST(CheckAgainstMpi, DisagreementNamesBothViews) {
  RankInfo r =
      discover_rank({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "0"}});
  try {
    check_against_mpi(r, 0, 1);  // e.g. srun without --mpi=pmix: MPI started as a singleton
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.message();
    EXPECT_NE(msg.find("rank 1 of 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("MPI reports rank 0 of 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("SLURM_PROCID=1"), std::string::npos) << msg;
  }
}

TEST(CheckAgainstMpi, TorchrunWithoutMpiWorldExplains) {
  RankInfo r = discover_rank({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
  try {
    check_against_mpi(r, 0, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("torchrun"), std::string::npos);
    EXPECT_NE(e.message().find("mpirun or srun"), std::string::npos);
  }
}

// The variables srun 22.05 sets in a task for --mpi=pmix, --mpi=pmi2 and --mpi=none (as seen in
// the test cluster, scripts/slurm_cluster.sh), against MPI libraries with different PMI clients.
TEST(SrunPmi, RefusedOnlyWhenTheMpiLibraryHasNoClientForIt) {
  const EnvMap step = {{"SLURM_PROCID", "1"},
                       {"SLURM_NTASKS", "2"},
                       {"SLURM_STEP_ID", "0"},
                       {"SLURM_NODELIST", "tessera"}};
  auto with = [&](EnvMap extra) {
    extra.insert(step.begin(), step.end());
    return extra;
  };
  const EnvMap pmix =
      with({{"SLURM_MPI_TYPE", "pmix"}, {"PMIX_RANK", "1"}, {"PMIX_NAMESPACE", "slurm.pmix.7.0"}});
  const EnvMap pmi2 =
      with({{"SLURM_MPI_TYPE", "pmi2"}, {"PMI_FD", "11"}, {"PMI_RANK", "1"}, {"PMI_SIZE", "2"}});
  const EnvMap none = step;
  const std::vector<std::string> debian = {"pmix"}, with_pmi = {"pmix", "pmi1", "pmi2"};

  EXPECT_EQ(srun_pmi_error(pmix, debian), "");
  EXPECT_EQ(srun_pmi_error(pmi2, with_pmi), "");
  EXPECT_EQ(srun_pmi_error(none, with_pmi), "");
  const std::string e2 = srun_pmi_error(pmi2, debian);
  EXPECT_NE(e2.find("srun offers PMI-2 (--mpi=pmi2)"), std::string::npos) << e2;
  EXPECT_NE(e2.find("client only for pmix"), std::string::npos) << e2;
  EXPECT_NE(e2.find("run srun --mpi=pmix"), std::string::npos) << e2;
  const std::string e0 = srun_pmi_error(none, debian);
  EXPECT_NE(e0.find("srun offers no PMI server (--mpi=none)"), std::string::npos) << e0;
  // A PMI-2-only library under --mpi=pmix: the advice is mpirun, not a plugin it lacks.
  const std::string ex = srun_pmi_error(pmix, {"pmi2"});
  EXPECT_NE(ex.find("srun offers PMIx"), std::string::npos) << ex;
  EXPECT_NE(ex.find("mpirun inside the allocation"), std::string::npos) << ex;

  // Not an srun task (sbatch's batch shell), a rank mpirun started, or clients unknown: no say.
  EXPECT_EQ(srun_pmi_error({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}, debian), "");
  EXPECT_EQ(srun_pmi_error(with({{"OMPI_COMM_WORLD_RANK", "1"}}), debian), "");
  EXPECT_EQ(srun_pmi_error(pmi2, {}), "");
  // Step variables without a node list: Open MPI starts as a world of one (then the launcher
  // check reports the disagreement).
  EXPECT_EQ(srun_pmi_error({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_STEP_ID", "0"}},
                           debian),
            "");
}

TEST(ChooseDevice, LocalRankModuloDevices) {
  RankInfo r;
  r.local_rank = 5;
  EXPECT_EQ(choose_device(r, 4), 1);
  EXPECT_EQ(choose_device(r, 8), 5);
  EXPECT_EQ(choose_device(r, 0), -1);
}

}  // namespace
}  // namespace tessera::launch
