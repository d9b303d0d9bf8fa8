#include "runtime/models/weights.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "common/error.h"

namespace tessera::models {

namespace {
torch::ScalarType torch_type(DType d, const std::string& name) {
  switch (d) {
    case DType::kF32:
      return torch::kFloat;
    case DType::kF16:
      return torch::kHalf;
    case DType::kBF16:
      return torch::kBFloat16;
    case DType::kF64:
      return torch::kDouble;
    case DType::kI64:
      return torch::kLong;
    case DType::kI32:
      return torch::kInt;
    case DType::kI16:
      return torch::kShort;
    case DType::kI8:
      return torch::kChar;
    case DType::kU8:
      return torch::kByte;
    case DType::kBool:
      return torch::kBool;
    default:
      TESSERA_FAIL("tensor '", name, "': dtype ", dtype_name(d), " cannot be loaded yet");
  }
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
}  // namespace

WeightLoader::WeightLoader(const ModelFolder& folder, WeightLoadOptions options)
    : options_(options) {
  TESSERA_CHECK(options_.memory_budget >= 0, "load memory budget must be >= 0 bytes, got ",
                options_.memory_budget);
  for (const auto& f : folder.weight_files()) {
    files_.push_back(SafetensorsFile::open(f));
    for (const auto& n : files_.back()->names()) {
      where_[n] = files_.back().get();
      total_bytes_ += static_cast<int64_t>(files_.back()->get(n).nbytes);
    }
  }
}

WeightLoader::~WeightLoader() { finish_progress(); }

void WeightLoader::advance_progress(int64_t bytes) const {
  progress_bytes_ += bytes;
  if (!options_.progress || total_bytes_ == 0) return;
  const int pct = static_cast<int>(100 * std::min(progress_bytes_, total_bytes_) / total_bytes_);
  if (pct == progress_shown_) return;
  progress_shown_ = pct;
  constexpr int kWidth = 30;
  std::string bar(static_cast<size_t>(kWidth * pct / 100), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\rloading weights [%s] %3d%% %.0f/%.0f MiB", bar.c_str(), pct,
               static_cast<double>(progress_bytes_) / (1 << 20),
               static_cast<double>(total_bytes_) / (1 << 20));
  std::fflush(stderr);
}

void WeightLoader::finish_progress() const {
  if (progress_shown_ < 0) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  progress_shown_ = -1;
}

bool WeightLoader::has(const std::string& name) const { return where_.count(name) > 0; }

const TensorEntry& WeightLoader::entry(const std::string& name) const {
  auto it = where_.find(name);
  TESSERA_CHECK(it != where_.end(), "checkpoint has no tensor '", name, "'");
  return it->second->get(name);
}

torch::Tensor WeightLoader::load(const std::string& name,
                                 const std::vector<int64_t>& expected_shape,
                                 torch::ScalarType dtype) const {
  const auto& e = entry(name);
  return load_slice(name, expected_shape, 0, {0, e.shape.empty() ? 1 : e.shape[0]}, dtype);
}

torch::Tensor WeightLoader::load_slice(const std::string& name,
                                       const std::vector<int64_t>& expected_shape, int64_t dim,
                                       sharding::ShardRange range, torch::ScalarType dtype) const {
  const auto& e = entry(name);
  std::vector<int64_t> shape = e.shape;
  if (!shape.empty() && dim >= 0 && dim < static_cast<int64_t>(shape.size())) {
    shape[dim] = range.size;
  }
  // Always a fresh tensor: the result must not alias the mapping, which closes with the loader.
  torch::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  load_into(name, expected_shape, dim, range, out);
  return out;
}

void WeightLoader::load_into(const std::string& name, const std::vector<int64_t>& expected_shape,
                             const torch::Tensor& dst) const {
  const auto& e = entry(name);
  load_into(name, expected_shape, 0, {0, e.shape.empty() ? 1 : e.shape[0]}, dst);
}

void WeightLoader::load_into(const std::string& name, const std::vector<int64_t>& expected_shape,
                             int64_t dim, sharding::ShardRange range,
                             const torch::Tensor& dst) const {
  const auto& e = entry(name);
  const SafetensorsFile& file = *where_.at(name);
  used_.insert(name);
  TESSERA_CHECK(expected_shape.empty() || e.shape == expected_shape, "tensor '", name,
                "' has shape ", shape_str(e.shape), " but the config implies ",
                shape_str(expected_shape));
  // The mapping is read-only; from_blob needs a non-const pointer but nothing writes through it.
  auto whole = torch::from_blob(const_cast<uint8_t*>(e.data), e.shape,
                                torch::TensorOptions().dtype(torch_type(e.dtype, name)));
  const int64_t rows = e.shape.empty() ? 1 : e.shape[0];
  if (e.shape.empty()) {
    TESSERA_CHECK(dst.numel() == 1, "tensor '", name,
                  "' is a scalar but its destination has shape ", dst.sizes());
    dst.copy_(whole.reshape(dst.sizes()));
    bytes_loaded_ += static_cast<int64_t>(e.nbytes);
    advance_progress(static_cast<int64_t>(e.nbytes));
    return;
  }
  TESSERA_CHECK(dim >= 0 && dim < static_cast<int64_t>(e.shape.size()) && range.begin >= 0 &&
                    range.size >= 0 && range.begin + range.size <= e.shape[dim],
                "tensor '", name, "': slice [", range.begin, ", ", range.begin + range.size,
                ") along dim ", dim, " is outside shape ", shape_str(e.shape));
  std::vector<int64_t> part_shape = e.shape;
  part_shape[dim] = range.size;
  TESSERA_CHECK(dst.sizes().vec() == part_shape, "tensor '", name, "': destination has shape ",
                shape_str(dst.sizes().vec()), " but the slice has shape ", shape_str(part_shape));
  TESSERA_CHECK(dst.is_floating_point() == whole.is_floating_point(), "tensor '", name, "': dtype ",
                dtype_name(e.dtype), " cannot be loaded into ", dst.scalar_type());

  // Leading rows the slice touches, and the bytes of one such row in the file.
  const int64_t row_begin = dim == 0 ? range.begin : 0;
  const int64_t row_end = dim == 0 ? range.begin + range.size : rows;
  const int64_t row_bytes = rows > 0 ? static_cast<int64_t>(e.nbytes) / rows : 0;
  int64_t chunk_rows = row_end - row_begin;
  if (options_.memory_budget > 0 && row_bytes > 0) {
    // A quarter of the budget per chunk: the chunk's mapped pages, a staging copy when the
    // destination converts across devices (up to twice the bytes for 16-bit to float32), and
    // the folio borders the release rounds out to.
    const int64_t element_ratio = std::max<int64_t>(
        1, static_cast<int64_t>(dst.element_size()) / static_cast<int64_t>(dtype_size(e.dtype)));
    const int64_t chunk_bytes =
        std::max<int64_t>(options_.memory_budget / (2 + 2 * element_ratio), row_bytes);
    chunk_rows = std::max<int64_t>(1, chunk_bytes / row_bytes);
  }
  for (int64_t r = row_begin; r < row_end; r += chunk_rows) {
    const int64_t n = std::min(chunk_rows, row_end - r);
    torch::Tensor src = whole.narrow(0, r, n);
    if (dim != 0) src = src.narrow(dim, range.begin, range.size);
    dst.narrow(0, r - row_begin, n).copy_(src);
    if (options_.memory_budget > 0) {
      file.release(e.data + r * row_bytes, static_cast<size_t>(n * row_bytes));
    }
  }
  bytes_loaded_ += whole.numel() == 0 ? 0
                                      : static_cast<int64_t>(e.nbytes) / whole.numel() *
                                            static_cast<int64_t>(dst.numel());
  advance_progress(static_cast<int64_t>(e.nbytes));
}

std::vector<std::string> WeightLoader::unused(const std::vector<std::string>& ignorable) const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) {
    if (used_.count(name)) continue;
    bool skip = false;
    for (const auto& suffix : ignorable) {
      skip = skip || (name.size() >= suffix.size() &&
                      name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
    }
    if (!skip) out.push_back(name);
  }
  return out;
}

}  // namespace tessera::models
