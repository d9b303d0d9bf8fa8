// `tessera info`: version, build options, library versions, threads, devices, and where each rank
// of the job sits. Works without a GPU and says so.
#include <nlohmann/json.hpp>

#include <cstdio>

#include "common/device.h"
#include "launch/build_info.h"
#include "launch/cli/commands.h"
#include "runtime/engine/torch_env.h"
#include "sharding/mpi/mpi_env.h"

namespace tessera::cli {

Command register_info(CLI::App& root) {
  auto json_out = std::make_shared<bool>(false);
  auto* app = root.add_subcommand("info", "Show the build, the libraries, devices and the world");
  app->add_flag("--json", *json_out, "Print one JSON object");

  Action action = [json_out](launch::World& w) -> int {
    const auto dev = query_devices();
    nlohmann::json place{{"rank", w.rank},
                         {"local_rank", w.local_rank},
                         {"node", w.node_id},
                         {"host", w.hostname},
                         {"device", w.device >= 0 ? "cuda:" + std::to_string(w.device) : "cpu"},
                         {"torch_threads", w.torch_threads}};
    const auto places = sharding::mpi::gather_strings(place.dump());
    if (w.rank != 0) return 0;

    nlohmann::json j;
    j["version"] = TESSERA_VERSION;
    j["build"] = {{"type", TESSERA_BUILD_TYPE},
                  {"compiler", TESSERA_CXX_COMPILER},
                  {"cuda_compiled", TESSERA_CUDA_COMPILED != 0},
                  {"cuda_compiler", TESSERA_CUDA_COMPILER_VERSION},
                  {"cuda_architectures", TESSERA_CUDA_ARCHITECTURES},
                  {"nccl_compiled", TESSERA_NCCL_COMPILED != 0}};
    j["torch"] = {{"version", engine::torch_version()},
                  {"cuda", engine::torch_cuda_compiled()},
                  {"threads_per_rank", w.torch_threads}};
    j["mpi"] = sharding::mpi::library_version();
    j["nccl"] = nccl_version_string();
    j["cuda"] = {{"runtime", cuda_version_string(dev.runtime_version)},
                 {"driver", cuda_version_string(dev.driver_version)},
                 {"devices", dev.count},
                 {"names", dev.names},
                 {"status", dev.status}};
    j["world"] = {{"size", w.size},
                  {"nodes", w.num_nodes},
                  {"launcher", launch::launcher_name(w.launcher.launcher)},
                  {"launcher_variables", w.launcher.source}};
    j["ranks"] = nlohmann::json::array();
    for (const auto& p : places) j["ranks"].push_back(nlohmann::json::parse(p));

    if (*json_out) {
      std::printf("%s\n", j.dump(2).c_str());
      return 0;
    }
    std::printf("Tessera %s (%s, %s)\n", TESSERA_VERSION, TESSERA_BUILD_TYPE, TESSERA_CXX_COMPILER);
    std::printf("  CUDA compiled: %s%s\n", TESSERA_CUDA_COMPILED ? "yes, nvcc " : "no",
                TESSERA_CUDA_COMPILED ? (std::string(TESSERA_CUDA_COMPILER_VERSION) + " for sm_" +
                                         TESSERA_CUDA_ARCHITECTURES)
                                            .c_str()
                                      : "");
    std::printf("  NCCL:          %s\n", nccl_version_string().c_str());
    std::printf("  MPI:           %s\n", sharding::mpi::library_version().c_str());
    std::printf("  libtorch:      %s (%s), %d thread(s) per rank\n",
                engine::torch_version().c_str(), engine::torch_cuda_compiled() ? "CUDA" : "CPU",
                w.torch_threads);
    std::printf("  CUDA runtime:  %s, driver %s\n",
                cuda_version_string(dev.runtime_version).c_str(),
                cuda_version_string(dev.driver_version).c_str());
    if (dev.count == 0) {
      std::printf("  devices:       none (%s); running on CPU\n", dev.status.c_str());
    } else {
      for (size_t i = 0; i < dev.names.size(); ++i) {
        std::printf("  device %zu:      %s\n", i, dev.names[i].c_str());
      }
    }
    std::printf("World: %d rank(s) on %d node(s), launcher %s\n", w.size, w.num_nodes,
                launch::launcher_name(w.launcher.launcher));
    for (const auto& p : j["ranks"]) {
      std::printf("  rank %d: local rank %d, node %d (%s), device %s, %d thread(s)\n",
                  p["rank"].get<int>(), p["local_rank"].get<int>(), p["node"].get<int>(),
                  p["host"].get<std::string>().c_str(), p["device"].get<std::string>().c_str(),
                  p["torch_threads"].get<int>());
    }
    return 0;
  };
  return {app, action, false};
}

}  // namespace tessera::cli
