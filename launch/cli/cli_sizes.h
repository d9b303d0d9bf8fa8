// Byte sizes on the command line: "1073741824", "512M", "64MB", "2G", "64KiB".
#pragma once

#include <cctype>
#include <cstdint>
#include <string>

#include "common/error.h"

namespace tessera::cli {

// Throws naming `flag` and the value when it is not a positive size (0 allowed with allow_zero).
inline int64_t parse_size(const std::string& flag, const std::string& s, bool allow_zero = false) {
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    used = 0;
  }
  std::string unit = s.substr(used);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  if (unit.size() == 2 && unit[1] == 'I') unit.pop_back();
  const double mult = unit.empty()  ? 1
                      : unit == "K" ? 1024.0
                      : unit == "M" ? 1024.0 * 1024
                      : unit == "G" ? 1024.0 * 1024 * 1024
                                    : -1;
  TESSERA_CHECK(used > 0 && mult > 0 && (v > 0 || (allow_zero && v == 0)), flag, " must be a ",
                allow_zero ? "non-negative" : "positive",
                " size in bytes (suffixes K, M, G allowed), got '", s, "'");
  return static_cast<int64_t>(v * mult);
}

}  // namespace tessera::cli
