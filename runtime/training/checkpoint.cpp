#include "runtime/training/checkpoint.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "common/error.h"
#include "runtime/models/safetensors.h"

namespace tessera::training {

namespace fs = std::filesystem;

namespace {

DType to_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat:
      return DType::kF32;
    case torch::kDouble:
      return DType::kF64;
    case torch::kBFloat16:
      return DType::kBF16;
    case torch::kHalf:
      return DType::kF16;
    case torch::kLong:
      return DType::kI64;
    case torch::kInt:
      return DType::kI32;
    case torch::kByte:
      return DType::kU8;
    default:
      TESSERA_FAIL("checkpoint: unsupported dtype ", t);
  }
}

torch::ScalarType to_scalar(DType t) {
  switch (t) {
    case DType::kF32:
      return torch::kFloat;
    case DType::kF64:
      return torch::kDouble;
    case DType::kBF16:
      return torch::kBFloat16;
    case DType::kF16:
      return torch::kHalf;
    case DType::kI64:
      return torch::kLong;
    case DType::kI32:
      return torch::kInt;
    case DType::kU8:
      return torch::kByte;
    default:
      TESSERA_FAIL("checkpoint: unsupported dtype ", dtype_name(t));
  }
}

void write_tensors(const std::string& path, const NamedTensors& tensors) {
  std::vector<models::TensorToWrite> out;
  out.reserve(tensors.size());
  for (const auto& [name, t0] : tensors) {
    auto t = t0.detach().contiguous().cpu();
    models::TensorToWrite w;
    w.name = name;
    w.dtype = to_dtype(t.scalar_type());
    w.shape = t.sizes().vec();
    w.bytes.resize(t.numel() * t.element_size());
    if (!w.bytes.empty()) std::memcpy(w.bytes.data(), t.data_ptr(), w.bytes.size());
    out.push_back(std::move(w));
  }
  models::write_safetensors(path, out, {{"format", "pt"}});
}

void write_text(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    TESSERA_CHECK(out.good(), "cannot write '", tmp.string(), "': ", std::strerror(errno));
    out << text;
    out.flush();
    TESSERA_CHECK(out.good(), "write to '", tmp.string(), "' failed: ", std::strerror(errno));
  }
  fs::rename(tmp, path);
}

std::string step_name(int64_t step) {
  std::ostringstream os;
  os << "step-" << std::setw(8) << std::setfill('0') << step;
  return os.str();
}

}  // namespace

std::string write_checkpoint(const std::string& dir, const CheckpointWrite& w,
                             sharding::Communicator& world) {
  const fs::path root(dir);
  const fs::path tmp = root / (".tmp-" + step_name(w.step));
  const fs::path final_dir = root / step_name(w.step);
  std::string err;
  if (world.rank() == 0) {
    try {
      fs::create_directories(root);
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    } catch (const std::exception& e) {
      err = std::string("cannot create checkpoint folder ") + tmp.string() + ": " + e.what();
    }
  }
  err = world.agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
  try {
    if (w.write_optimizer) write_tensors((tmp / w.optimizer_file).string(), w.optimizer);
    if (world.rank() == 0) {
      write_tensors((tmp / "model.safetensors").string(), w.model);
      write_text(tmp / "config.json", w.model_config.dump(2) + "\n");
    }
  } catch (const std::exception& e) {
    err = e.what();
  }
  err = world.agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
  if (world.rank() == 0) {
    try {
      // Last inside the folder: its presence marks the folder complete.
      write_text(tmp / "trainer_state.json", w.trainer_state.dump(2) + "\n");
      if (fs::exists(final_dir)) fs::remove_all(final_dir);
      fs::rename(tmp, final_dir);
      write_text(root / "latest", step_name(w.step) + "\n");
      // Older complete folders beyond `keep`, newest first.
      std::vector<std::string> steps;
      for (const auto& e : fs::directory_iterator(root)) {
        const std::string name = e.path().filename().string();
        if (e.is_directory() && name.rfind("step-", 0) == 0) steps.push_back(name);
      }
      std::sort(steps.rbegin(), steps.rend());
      for (size_t i = 0; i < steps.size(); ++i) {
        if (steps[i] != step_name(w.step) && static_cast<int>(i) >= w.keep) {
          fs::remove_all(root / steps[i]);
        }
      }
    } catch (const std::exception& e) {
      err = std::string("checkpoint ") + final_dir.string() + ": " + e.what();
    }
  }
  err = world.agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
  return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  const fs::path root(dir);
  std::ifstream in(root / "latest");
  if (!in.good()) return std::nullopt;
  std::string name;
  std::getline(in, name);
  const fs::path p = root / name;
  if (name.empty() || !fs::exists(p / "trainer_state.json")) return std::nullopt;
  return p.string();
}

std::map<std::string, torch::Tensor> read_tensors(const std::string& path) {
  auto f = models::SafetensorsFile::open(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& name : f->names()) {
    const auto& e = f->get(name);
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(to_scalar(e.dtype)));
    if (e.nbytes > 0) std::memcpy(t.data_ptr(), e.data, e.nbytes);
    out.emplace(name, t);
  }
  return out;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  TESSERA_CHECK(in.good(), "cannot read '", path, "'");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  TESSERA_CHECK(!j.is_discarded(), "'", path, "' is not valid JSON");
  return j;
}

}  // namespace tessera::training
