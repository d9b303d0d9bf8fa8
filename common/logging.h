// Logging with the rank in every line: "[tessera r1/4 info] message". Built on spdlog; the level
// comes from TESSERA_LOG_LEVEL (trace, debug, info, warn, error, off), default warn, so that a
// job's stdout holds only its results.
#pragma once

#include <spdlog/spdlog.h>

namespace tessera::log {

// Called once the rank is known (launch/bootstrap); before that lines say "r?".
void set_rank(int rank, int world_size);
spdlog::logger& logger();

template <typename... Args>
void debug(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().debug(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void info(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().info(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void warn(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().warn(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void error(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().error(fmt, std::forward<Args>(args)...);
}

}  // namespace tessera::log
