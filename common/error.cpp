#include "common/error.h"

namespace tessera {

namespace {
std::string_view basename_of(std::string_view path) {
  // Keep the path from the project root ("caches/block_pool.cpp"), not the build machine's.
  for (std::string_view top : {"common/", "kernels/", "caches/", "sharding/", "runtime/",
                               "launch/", "tests/", "bench/"}) {
    if (auto pos = path.rfind(top); pos != std::string_view::npos) return path.substr(pos);
  }
  auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}
}  // namespace

Error::Error(std::string message, std::string_view file, int line)
    : std::runtime_error(message + " (" + std::string(basename_of(file)) + ":" +
                         std::to_string(line) + ")"),
      message_(std::move(message)) {}

namespace detail {
void throw_error(std::string_view file, int line, std::string message) {
  throw Error(std::move(message), file, line);
}
}  // namespace detail

}  // namespace tessera
