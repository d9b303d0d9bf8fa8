// Helpers the fuzz targets share: a scratch folder of this process (in memory where /dev/shm
// exists, removed at exit) and whole-file writes.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace tessera::fuzz {

inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::string root = fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0
                           ? std::string("/dev/shm")
                           : fs::temp_directory_path().string();
    std::string tmpl = root + "/tessera-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    static const std::string keep = tmpl;
    std::atexit([] {
      std::error_code e;
      std::filesystem::remove_all(keep, e);
    });
    return tmpl;
  }();
  return dir;
}

inline void write_file(const std::string& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.good()) std::abort();
}

inline void write_file(const std::string& path, const std::string& text) {
  write_file(path, text.data(), text.size());
}

}  // namespace tessera::fuzz
