#include "runtime/models/delta/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.h"

namespace tessera::models::delta {

namespace fs = std::filesystem;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TESSERA_CHECK(in.good(), "cannot read '", path, "': ", std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The header bytes of a safetensors file (already validated by SafetensorsFile::open).
void read_header(Checkpoint::File& f) {
  const int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
  TESSERA_CHECK(fd >= 0, "cannot open '", f.path, "': ", std::strerror(errno));
  uint8_t len[8];
  const bool ok = ::pread(fd, len, 8, 0) == 8;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  f.header.resize(ok ? n : 0);
  const bool ok2 = ok && ::pread(fd, f.header.data(), n, 8) == static_cast<ssize_t>(n);
  f.size = static_cast<uint64_t>(::lseek(fd, 0, SEEK_END));
  ::close(fd);
  TESSERA_CHECK(ok2, "cannot read the header of '", f.path, "'");
  f.data_start = 8 + n;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path, const std::string& what) {
  Checkpoint c;
  c.path_ = path;
  c.what_ = what;
  std::error_code ec;
  const fs::path p(path);
  TESSERA_CHECK(fs::exists(p, ec), what, " '", path, "' does not exist");
  std::vector<std::pair<std::string, std::string>> files;  // (name, path)
  if (fs::is_directory(p, ec)) {
    if (fs::is_regular_file(p / "model.safetensors", ec)) {
      files.emplace_back("model.safetensors", (p / "model.safetensors").string());
    } else if (fs::is_regular_file(p / "model.safetensors.index.json", ec)) {
      const std::string index_path = (p / "model.safetensors.index.json").string();
      c.index_json_ = read_text(index_path);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(*c.index_json_);
      } catch (const nlohmann::json::exception& e) {
        TESSERA_FAIL(what, ": '", index_path, "' is not valid JSON: ", e.what());
      }
      TESSERA_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), what,
                    ": '", index_path, "' has no weight_map object");
      std::set<std::string> names;
      for (auto& [k, v] : j["weight_map"].items()) {
        TESSERA_CHECK(v.is_string(), what, ": '", index_path, "': weight_map['", k,
                      "'] must be a file name, got ", v.dump());
        names.insert(v.get<std::string>());
      }
      for (const auto& n : names) {
        TESSERA_CHECK(n.find('/') == std::string::npos && n != "." && n != "..", what, ": '",
                      index_path, "' names the shard '", n, "', which is not a plain file name");
        TESSERA_CHECK(fs::is_regular_file(p / n, ec), what, ": '", index_path,
                      "' names the shard '", n, "', which is missing");
        files.emplace_back(n, (p / n).string());
      }
    } else {
      TESSERA_FAIL(what, " folder '", path,
                   "' has neither model.safetensors nor model.safetensors.index.json");
    }
  } else {
    files.emplace_back(p.filename().string(), path);
  }
  for (auto& [name, fpath] : files) {
    File f;
    f.name = name;
    f.path = fpath;
    try {
      f.st = SafetensorsFile::open(fpath);
    } catch (const Error& e) {
      TESSERA_FAIL(what, ": ", e.message());
    }
    read_header(f);
    // The mapping's first byte, from any tensor: its data pointer less its offset in the file.
    const auto header = nlohmann::json::parse(f.header);
    for (auto& [k, v] : header.items()) {
      if (k == "__metadata__") continue;
      const uint8_t* data = f.st->get(k).data;
      f.span.begin = data - f.data_start - v.at("data_offsets")[0].get<uint64_t>();
      f.span.end = f.span.begin + f.size;
      break;
    }
    for (const auto& t : f.st->names()) {
      TESSERA_CHECK(c.where_.count(t) == 0, what, ": tensor '", t, "' is in two shards, '",
                    c.files_[c.where_.at(t)].name, "' and '", name, "'");
      c.where_[t] = c.files_.size();
    }
    c.files_.push_back(std::move(f));
  }
  return c;
}

const TensorEntry& Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  TESSERA_CHECK(it != where_.end(), what_, " checkpoint '", path_, "' has no tensor '", name, "'");
  return files_[it->second].st->get(name);
}

size_t Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  TESSERA_CHECK(it != where_.end(), what_, " checkpoint '", path_, "' has no tensor '", name, "'");
  return it->second;
}

std::vector<std::string> Checkpoint::names_in_file_order() const {
  std::vector<std::string> out;
  for (const auto& f : files_) {
    auto names = f.st->names();
    std::sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
      return f.st->get(a).data < f.st->get(b).data;
    });
    out.insert(out.end(), names.begin(), names.end());
  }
  return out;
}

uint64_t Checkpoint::data_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) {
    for (const auto& t : f.st->names()) n += f.st->get(t).nbytes;
  }
  return n;
}

uint64_t Checkpoint::largest_tensor_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) {
    for (const auto& t : f.st->names()) n = std::max<uint64_t>(n, f.st->get(t).nbytes);
  }
  return n;
}

void release_mapped(const MappedSpan& span, const void* p, size_t n) {
  if (n == 0 || span.begin == nullptr) return;
  // Rounded outwards to 2 MiB: the page cache holds files in large folios, and a read fault maps
  // the whole folio (up to 2 MiB) around the byte read, so releasing only the bytes read would
  // leave most of it mapped. Dropping a little of the neighbours is harmless: a later read maps
  // them again from the page cache.
  // Never past the mapping itself: MADV_DONTNEED on a neighbouring anonymous mapping would zero
  // it. The mapping starts on a page boundary and covers whole pages.
  constexpr uintptr_t kSpan = uintptr_t{2} << 20;
  static const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto lo = reinterpret_cast<uintptr_t>(span.begin);
  const auto hi = (reinterpret_cast<uintptr_t>(span.end) + page - 1) & ~(page - 1);
  const auto begin = std::max(lo, reinterpret_cast<uintptr_t>(p) & ~(kSpan - 1));
  const auto end = std::min(hi, (reinterpret_cast<uintptr_t>(p) + n + kSpan - 1) & ~(kSpan - 1));
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace tessera::models::delta
