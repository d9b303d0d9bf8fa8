// safetensors files: raw bytes as a file, opened by SafetensorsFile::open (the reader every weight
// loader, `tessera inspect` and the delta tools use). Properties: a file it accepts has entries
// whose bytes are exactly the range the header names, inside the file, not overlapping; metadata
// values are strings.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "runtime/models/safetensors.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/fuzz_util.h"

using tessera::models::SafetensorsFile;

TESSERA_FUZZ_TARGET(safetensors) {
  static const std::string path = tessera::fuzz::scratch_dir() + "/fuzz.safetensors";
  tessera::fuzz::write_file(path, data, size);
  std::unique_ptr<SafetensorsFile> f;
  try {
    f = SafetensorsFile::open(path);
  } catch (const tessera::Error&) {
    return 0;
  }
  // Accepted: the header is where the first 8 bytes say, and every entry's bytes are the ones its
  // data_offsets name (read back from the input, an independent view of the same bytes).
  TESSERA_FUZZ_ASSERT(size >= 8, "accepted a file of " + std::to_string(size) + " bytes");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  TESSERA_FUZZ_ASSERT(header_len <= size - 8, "header length past the end");
  const auto header = nlohmann::json::parse(data + 8, data + 8 + header_len);
  const uint8_t* body = data + 8 + header_len;
  const uint64_t body_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& name : f->names()) {
    const auto& e = f->get(name);
    TESSERA_FUZZ_ASSERT(header.contains(name), "entry '" + name + "' not in the header");
    const auto begin = header[name]["data_offsets"][0].get<uint64_t>();
    const auto end = header[name]["data_offsets"][1].get<uint64_t>();
    TESSERA_FUZZ_ASSERT(begin <= end && end <= body_size, "range of '" + name + "' outside");
    TESSERA_FUZZ_ASSERT(e.nbytes == end - begin, "nbytes of '" + name + "'");
    TESSERA_FUZZ_ASSERT(static_cast<uint64_t>(e.numel()) * tessera::dtype_size(e.dtype) == e.nbytes,
                        "numel x dtype size != nbytes for '" + name + "'");
    TESSERA_FUZZ_ASSERT(e.nbytes == 0 || std::memcmp(e.data, body + begin, e.nbytes) == 0,
                        "bytes of '" + name + "' differ from the range its header names");
    if (end > begin) ranges.emplace_back(begin, end);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    TESSERA_FUZZ_ASSERT(ranges[i].first >= ranges[i - 1].second, "overlapping tensors accepted");
  }
  for (const auto& [k, v] : f->metadata()) {
    TESSERA_FUZZ_ASSERT(header["__metadata__"][k].get<std::string>() == v, "metadata '" + k + "'");
  }
  return 0;
}
