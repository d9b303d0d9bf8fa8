#include "runtime/models/weights.h"

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

WeightLoader::WeightLoader(const ModelFolder& folder) {
  for (const auto& f : folder.weight_files()) {
    files_.push_back(SafetensorsFile::open(f));
    for (const auto& n : files_.back()->names()) where_[n] = files_.back().get();
  }
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
  used_.insert(name);
  TESSERA_CHECK(expected_shape.empty() || e.shape == expected_shape, "tensor '", name,
                "' has shape ", shape_str(e.shape), " but the config implies ",
                shape_str(expected_shape));
  // The mapping is read-only; from_blob needs a non-const pointer but nothing writes through it.
  auto whole = torch::from_blob(const_cast<uint8_t*>(e.data), e.shape,
                                torch::TensorOptions().dtype(torch_type(e.dtype, name)));
  torch::Tensor part = whole;
  if (!e.shape.empty()) {
    TESSERA_CHECK(dim >= 0 && dim < static_cast<int64_t>(e.shape.size()) && range.begin >= 0 &&
                      range.begin + range.size <= e.shape[dim],
                  "tensor '", name, "': slice [", range.begin, ", ", range.begin + range.size,
                  ") along dim ", dim, " is outside shape ", shape_str(e.shape));
    part = whole.narrow(dim, range.begin, range.size);
  }
  // Always a fresh copy: the result must not alias the mapping, which closes with the loader.
  torch::Tensor out = torch::empty(part.sizes(), torch::TensorOptions().dtype(dtype));
  out.copy_(part);
  bytes_loaded_ += part.numel() * static_cast<int64_t>(dtype_size(e.dtype));
  return out;
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
