#include "runtime/models/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"

namespace tessera::models {

namespace {
// A header larger than this is not a real checkpoint's (the reference loader uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
}  // namespace

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TESSERA_CHECK(fd >= 0, "cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    TESSERA_FAIL("cannot stat '", path, "': ", std::strerror(errno));
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    TESSERA_FAIL("'", path, "' is not a safetensors file: ", file_size,
                 " bytes, shorter than the 8-byte header length");
  }
  f->map_size_ = file_size;
  f->map_ = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  TESSERA_CHECK(f->map_ != MAP_FAILED, "cannot map '", path, "': ", std::strerror(errno));
  const auto* base = static_cast<const uint8_t*>(f->map_);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  TESSERA_CHECK(header_len <= kMaxHeaderBytes && header_len <= file_size - 8, "'", path,
                "': header length ", header_len, " exceeds the file (", file_size,
                " bytes) or the 100 MB limit");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(base + 8, base + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL("'", path, "': header is not valid JSON: ", e.what());
  }
  TESSERA_CHECK(header.is_object(), "'", path, "': header must be a JSON object");
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& item : header.items()) {
    // Not a structured binding: lambdas capturing those need clang >= 16 (the fuzz build's is 14).
    const std::string& name = item.key();
    auto& value = item.value();
    if (name == "__metadata__") {
      TESSERA_CHECK(value.is_object(), "'", path, "': __metadata__ must be an object");
      for (auto& [k, v] : value.items()) {
        TESSERA_CHECK(v.is_string(), "'", path, "': __metadata__['", k, "'] must be a string");
        f->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) {
      TESSERA_FAIL("'", path, "': tensor '", name, "': ", why);
    };
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets")) {
      bad("entry must have dtype, shape and data_offsets");
    }
    TensorEntry e;
    e.name = name;
    if (!value["dtype"].is_string()) bad("dtype must be a string");
    try {
      e.dtype = parse_dtype(value["dtype"].get<std::string>());
    } catch (const Error& err) {
      bad(err.message());
    }
    if (!value["shape"].is_array()) bad("shape must be an array");
    uint64_t numel = 1;
    for (auto& d : value["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        bad("shape has a negative or non-integer dimension");
      e.shape.push_back(d.get<int64_t>());
      // A product that wraps could match a small byte range and let torch read past the mapping.
      const auto dim = static_cast<uint64_t>(e.shape.back());
      if (dim != 0 && numel > static_cast<uint64_t>(INT64_MAX) / dim) {
        bad("shape " + value["shape"].dump() + " has more elements than fit in 64 bits");
      }
      numel *= dim;
    }
    auto& off = value["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      bad("data_offsets must be [begin, end]");
    }
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
          "] fall outside the " + std::to_string(data_size) + " data bytes");
    }
    const bool too_big = numel > UINT64_MAX / dtype_size(e.dtype);
    if (too_big || end - begin != numel * dtype_size(e.dtype)) {
      bad("holds " + std::to_string(end - begin) + " bytes but its shape and dtype need " +
          (too_big ? "more than 2^64" : std::to_string(numel * dtype_size(e.dtype))));
    }
    e.data = data + begin;
    e.nbytes = end - begin;
    ranges.emplace_back(begin, end);
    f->entries_.emplace(name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    TESSERA_CHECK(ranges[i].first >= ranges[i - 1].second, "'", path,
                  "': tensors overlap at data byte ", ranges[i].first);
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr && map_ != MAP_FAILED) munmap(map_, map_size_);
}

void SafetensorsFile::release(const void* p, size_t n) const {
  if (n == 0 || map_ == nullptr || map_ == MAP_FAILED) return;
  // The page cache holds files in large folios and a read fault maps the whole folio (up to
  // 2 MiB) around the byte read: releasing only the bytes read would leave most of it mapped.
  // Dropping a little of the neighbours is harmless. Never past the mapping: MADV_DONTNEED on a
  // neighbouring anonymous mapping would zero it.
  constexpr uintptr_t kSpan = uintptr_t{2} << 20;
  static const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto lo = reinterpret_cast<uintptr_t>(map_);
  const auto hi = (lo + map_size_ + page - 1) & ~(page - 1);
  const auto at = reinterpret_cast<uintptr_t>(p);
  const auto begin = std::max(lo, at & ~(kSpan - 1));
  const auto end = std::min(hi, (at + n + kSpan - 1) & ~(kSpan - 1));
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

const TensorEntry& SafetensorsFile::get(const std::string& name) const {
  auto it = entries_.find(name);
  TESSERA_CHECK(it != entries_.end(), "tensor '", name, "' not found in '", path_, "'");
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_) out.push_back(k);
  return out;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (auto d : t.shape) numel *= static_cast<uint64_t>(d);
    TESSERA_CHECK(numel * dtype_size(t.dtype) == t.bytes.size(), "tensor '", t.name, "' has ",
                  t.bytes.size(), " bytes but its shape and dtype need ",
                  numel * dtype_size(t.dtype));
    header[t.name] = {{"dtype", safetensors_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');

  std::random_device rd;
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TESSERA_CHECK(out.good(), "cannot write '", tmp, "': ", std::strerror(errno));
    uint8_t len[8];
    uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& t : tensors) {
      out.write(reinterpret_cast<const char*>(t.bytes.data()),
                static_cast<std::streamsize>(t.bytes.size()));
    }
    out.flush();
    TESSERA_CHECK(out.good(), "write to '", tmp, "' failed: ", std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    TESSERA_FAIL("cannot rename '", tmp, "' to '", path, "': ", std::strerror(err));
  }
}

}  // namespace tessera::models
