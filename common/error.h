// Tessera's error type and checks. A failed TESSERA_CHECK throws tessera::Error whose message gives
// file:line and names the offending argument and its value, e.g.
//   TESSERA_CHECK(batch_size > 0, "batch_size must be positive, got ", batch_size);
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tessera {

// Thrown for invalid arguments, malformed files and broken invariants. what() is one line:
// "<message> (<file>:<line>)".
class Error : public std::runtime_error {
 public:
  Error(std::string message, std::string_view file, int line);
  const std::string& message() const { return message_; }  // without the location

 private:
  std::string message_;
};

// An error that every rank of the job raised together (agreed over MPI before it was thrown), so
// the ranks may exit normally instead of aborting each other.
class CollectiveError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(std::string_view file, int line, std::string message);
}  // namespace detail

}  // namespace tessera

#define TESSERA_CHECK(cond, ...)                                                                   \
  do {                                                                                             \
    if (!(cond)) [[unlikely]] {                                                                    \
      ::tessera::detail::throw_error(__FILE__, __LINE__, ::tessera::detail::str_cat(__VA_ARGS__)); \
    }                                                                                              \
  } while (0)

#define TESSERA_FAIL(...) \
  ::tessera::detail::throw_error(__FILE__, __LINE__, ::tessera::detail::str_cat(__VA_ARGS__))
