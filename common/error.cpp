#include "common/error.h"

namespace tessera {

Error::Error(std::string message, std::string_view file, int line)
    : std::runtime_error(message + " (" + std::string(file) + ":" + std::to_string(line) + ")"),
      message_(std::move(message)) {}

namespace detail {
void throw_error(std::string_view file, int line, std::string message) {
  throw Error(std::move(message), file, line);
}
}  // namespace detail

}  // namespace tessera
