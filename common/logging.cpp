#include "common/logging.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>
#include <string>

namespace tessera::log {

namespace {
std::shared_ptr<spdlog::logger> make_logger() {
  auto logger = std::make_shared<spdlog::logger>("tessera",
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  const char* level = std::getenv("TESSERA_LOG_LEVEL");
  logger->set_level(level ? spdlog::level::from_str(level) : spdlog::level::warn);
  logger->set_pattern("[tessera r?] [%l] %v");
  return logger;
}
}  // namespace

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = make_logger();
  return *instance;
}

void set_rank(int rank, int world_size) {
  logger().set_pattern("[tessera r" + std::to_string(rank) + "/" + std::to_string(world_size) +
                       "] [%l] %v");
}

}  // namespace tessera::log
