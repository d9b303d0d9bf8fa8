// tessera: the command-line entry point. Parses arguments before touching MPI so usage errors are
// immediate; every rank parses the same arguments, and only rank 0 reports.
#include <cstdio>
#include <exception>
#include <vector>

#include "common/error.h"
#include "launch/cli/commands.h"
#include "launch/rank_env.h"
#include "sharding/mpi/mpi_env.h"

namespace {

// Rank from the launcher's variables, usable before MPI starts; 0 if they are unreadable.
int env_rank() {
  try {
    return tessera::launch::discover_rank(tessera::launch::process_env()).rank;
  } catch (...) {
    return 0;
  }
}

void report(bool print, const std::string& message) {
  if (print) std::fprintf(stderr, "tessera: error: %s\n", message.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tessera: distributed training and inference runtime for transformer models",
               "tessera"};
  app.require_subcommand(1);
  app.set_version_flag("--version", TESSERA_VERSION_STRING);
  std::vector<tessera::cli::Command> commands;
  commands.push_back(tessera::cli::register_info(app));
  commands.push_back(tessera::cli::register_generate(app));
  commands.push_back(tessera::cli::register_tokenize(app));
  commands.push_back(tessera::cli::register_train(app));
  for (auto& c : tessera::cli::register_bench(app)) commands.push_back(std::move(c));
  for (auto& c : tessera::cli::register_delta(app)) commands.push_back(std::move(c));
  commands.push_back(tessera::cli::register_inspect(app));
  commands.push_back(tessera::cli::register_serve(app));
  commands.push_back(tessera::cli::register_router(app));
  for (auto& c : tessera::cli::register_embed(app)) commands.push_back(std::move(c));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    if (env_rank() == 0) return app.exit(e);
    return 0;
  } catch (const CLI::CallForAllHelp& e) {
    if (env_rank() == 0) return app.exit(e);
    return 0;
  } catch (const CLI::CallForVersion& e) {
    if (env_rank() == 0) return app.exit(e);
    return 0;
  } catch (const CLI::ParseError& e) {
    report(env_rank() == 0, std::string(e.what()) + " (run 'tessera --help')");
    return 2;
  }

  const tessera::cli::Command* chosen = nullptr;
  for (const auto& c : commands) {
    if (c.app->parsed()) chosen = &c;
  }

  tessera::launch::World world;
  bool multi_rank = false;
  try {
    world = tessera::launch::bootstrap_world(&argc, &argv, {.want_nccl = chosen->want_nccl});
    multi_rank = world.size > 1;
    const int rc = chosen->action(world);
    tessera::launch::shutdown_world(world);
    return rc;
  } catch (const tessera::CollectiveError& e) {
    // Every rank raised it together: rank 0 reports, all exit normally. (`world` is unset when
    // bootstrap_world itself failed.)
    report(tessera::launch::job_rank() == 0, e.message());
    tessera::launch::shutdown_world(world);
    return 1;
  } catch (const tessera::Error& e) {
    // Only this rank failed; the others may be waiting on it, so end the whole job.
    std::fprintf(stderr, "tessera: error (rank %d): %s\n", world.rank, e.message().c_str());
    if (multi_rank) tessera::sharding::mpi::abort_world(1);
    tessera::launch::shutdown_world(world);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tessera: error (rank %d): %s\n", world.rank, e.what());
    if (multi_rank) tessera::sharding::mpi::abort_world(1);
    tessera::launch::shutdown_world(world);
    return 1;
  }
}
