// Delta checkpoints: lossless round trips are bitwise exact (every file of the rebuilt checkpoint,
// shards and index included) on checkpoints made and fine-tuned by Hugging Face transformers and
// on hand-made ones with odd tensors (int64, empty, 1-D, float16, NaN rows, tensors new in the
// tuned checkpoint or only in the base); lossy int8 round trips stay within the bound the delta
// records, measured here from the files; a wrong base, a missing tensor, a shape mismatch, a
// truncated or corrupted delta give one clear error and leave no output behind. The `tessera`
// binary's peak memory (wait4's ru_maxrss = VmHWM) grows by less than the largest tensor + 10%.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/error.h"
#include "runtime/models/delta/delta.h"
#include "runtime/models/safetensors.h"
#include "tests/support/subprocess.h"

extern char** environ;

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __sanitizer_purge_allocator();  // ASan's runtime (sanitizer/allocator_interface.h)
#endif

namespace tessera::models::delta {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/tessera_delta_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (fs::path(path) / name).string(); }
  std::string path;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every regular file of a folder (or the file itself), by relative name.
std::map<std::string, std::string> files_of(const std::string& path) {
  std::map<std::string, std::string> out;
  if (fs::is_regular_file(path)) {
    out[""] = slurp(path);
    return out;
  }
  for (const auto& e : fs::directory_iterator(path)) {
    if (e.is_regular_file()) out[e.path().filename().string()] = slurp(e.path().string());
  }
  return out;
}

// Nothing but the expected entries in a folder: no temporary files left behind.
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error, expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.message()).find('\n'), std::string::npos) << "one line: " << e.what();
  }
}

// ---- checkpoints made by transformers (test venv) ----

std::string venv_python() {
  const char* p = std::getenv("TESSERA_VENV_PYTHON");
  return p != nullptr && fs::exists(p) ? p : "";
}

std::string script(const std::string& name) {
  return testing::env_or_die("TESSERA_SOURCE_DIR") + "/tests/runtime/models/delta/" + name;
}

// OUT/<variant>/{base,tuned} for float32, bfloat16 and bfloat16_sharded, made once per run;
// false (the tests skip) without the venv.
bool make_hf_checkpoints(const std::string& out) {
  const auto py = venv_python();
  if (py.empty()) return false;
  const auto r = testing::run_command(py + " " + script("make_checkpoints.py") + " " + out +
                                          " --variants float32,bfloat16,bfloat16:1",
                                      300);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0;
}

// ---- hand-made checkpoints ----

TensorToWrite tensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                     const std::vector<float>& values) {
  TensorToWrite t{name, dtype, std::move(shape), {}};
  const size_t size = dtype_size(dtype);
  t.bytes.resize(values.size() * size);
  for (size_t i = 0; i < values.size(); ++i) {
    uint8_t* p = t.bytes.data() + i * size;
    if (dtype == DType::kF32) {
      std::memcpy(p, &values[i], 4);
    } else if (dtype == DType::kF16 || dtype == DType::kBF16) {
      const uint16_t h = dtype == DType::kF16 ? float_to_half(values[i]) : float_to_bf16(values[i]);
      std::memcpy(p, &h, 2);
    } else if (dtype == DType::kI64) {
      const int64_t v = static_cast<int64_t>(values[i]);
      std::memcpy(p, &v, 8);
    }
  }
  return t;
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 0.05f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A base and a tuned checkpoint with every kind of tensor the encoder treats apart.
void write_odd_pair(const TempDir& dir) {
  std::mt19937 rng(7);
  auto w = randn(37 * 53, rng);
  auto w16 = randn(9 * 70, rng);
  auto bias = randn(53, rng);
  std::vector<float> pos(100);
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<float>(i);
  auto nan_w = randn(6 * 8, rng);
  std::vector<TensorToWrite> base = {
      tensor("w", DType::kF32, {37, 53}, w),
      tensor("w16", DType::kF16, {9, 70}, w16),
      tensor("bias", DType::kF32, {53}, bias),
      tensor("position_ids", DType::kI64, {1, 100}, pos),
      tensor("empty", DType::kBF16, {0, 4}, {}),
      tensor("nan_w", DType::kBF16, {6, 8}, nan_w),
      tensor("frozen", DType::kBF16, {4, 4}, randn(16, rng)),
      tensor("dropped_head", DType::kF32, {3, 3}, randn(9, rng)),
  };
  auto tuned = base;
  auto nudge = [&](std::vector<float> v) {
    std::normal_distribution<float> d(0.0f, 1e-3f);
    for (auto& x : v) x += d(rng);
    return v;
  };
  tuned[0] = tensor("w", DType::kF32, {37, 53}, nudge(w));
  tuned[1] = tensor("w16", DType::kF16, {9, 70}, nudge(w16));
  tuned[2] = tensor("bias", DType::kF32, {53}, nudge(bias));
  auto nan_tuned = nudge(nan_w);
  nan_tuned[2 * 8 + 3] = std::nanf("");  // row 2 cannot be stored as int8
  nan_tuned[4 * 8 + 1] = INFINITY;       // nor row 4
  tuned[5] = tensor("nan_w", DType::kBF16, {6, 8}, nan_tuned);
  tuned.pop_back();  // dropped_head: base only
  tuned.push_back(tensor("classifier.weight", DType::kF32, {2, 53}, randn(106, rng)));  // new
  fs::create_directories(dir / "base");
  fs::create_directories(dir / "tuned");
  write_safetensors(dir / "base/model.safetensors", base, {{"format", "pt"}});
  write_safetensors(dir / "tuned/model.safetensors", tuned, {{"format", "pt"}});
}

float element(const TensorEntry& e, int64_t i) {
  const uint8_t* p = e.data + i * static_cast<int64_t>(dtype_size(e.dtype));
  uint16_t h;
  switch (e.dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::kF16:
      std::memcpy(&h, p, 2);
      return half_to_float(h);
    case DType::kBF16:
      std::memcpy(&h, p, 2);
      return bf16_to_float(h);
    default:
      return NAN;
  }
}

// max |a - b| over every floating tensor of two single-file checkpoints; non-float tensors and
// non-finite elements must be bitwise equal.
double max_abs_difference(const std::string& a_path, const std::string& b_path) {
  auto a = SafetensorsFile::open(a_path), b = SafetensorsFile::open(b_path);
  EXPECT_EQ(a->names(), b->names());
  double worst = 0;
  for (const auto& n : a->names()) {
    const auto &ea = a->get(n), &eb = b->get(n);
    EXPECT_EQ(ea.dtype, eb.dtype) << n;
    EXPECT_EQ(ea.shape, eb.shape) << n;
    if (ea.dtype != DType::kF32 && ea.dtype != DType::kF16 && ea.dtype != DType::kBF16) {
      EXPECT_EQ(std::memcmp(ea.data, eb.data, ea.nbytes), 0) << n;
      continue;
    }
    for (int64_t i = 0; i < ea.numel(); ++i) {
      const float x = element(ea, i), y = element(eb, i);
      if (!std::isfinite(x) || !std::isfinite(y)) {
        EXPECT_EQ(std::memcmp(ea.data + i * dtype_size(ea.dtype),
                              eb.data + i * dtype_size(ea.dtype), dtype_size(ea.dtype)),
                  0)
            << n << "[" << i << "]";
        continue;
      }
      worst = std::max(worst, std::fabs(static_cast<double>(x) - y));
    }
  }
  return worst;
}

// ---- round trips ----

TEST(Delta, HandMadeLosslessIsBitwiseExactWithBothTransforms) {
  TempDir dir;
  write_odd_pair(dir);
  for (auto tr : {Transform::kXor, Transform::kDiff}) {
    const std::string d = dir / (std::string("d_") + transform_name(tr));
    const auto rep = create_delta({dir / "base", dir / "tuned", d, false, tr, 3});
    EXPECT_EQ(rep.tensors, 8);
    EXPECT_EQ(rep.new_tensors, 1);
    EXPECT_EQ(rep.base_only_tensors, 1);
    EXPECT_EQ(rep.unchanged_tensors, 3);  // position_ids, empty, frozen
    EXPECT_EQ(rep.lossy_tensors, 0);
    EXPECT_GT(rep.ratio(), 0.0);
    const std::string out = dir / (std::string("rebuilt_") + transform_name(tr));
    const auto ap = apply_delta({dir / "base", d, out});
    EXPECT_EQ(ap.tensors, 8);
    EXPECT_FALSE(ap.lossy);
    EXPECT_EQ(files_of(out), files_of(dir / "tuned")) << transform_name(tr);
  }
}

TEST(Delta, HandMadeLossyStaysWithinTheRecordedBound) {
  TempDir dir;
  write_odd_pair(dir);
  const auto rep = create_delta({dir / "base", dir / "tuned", dir / "d", true, Transform::kXor, 3});
  EXPECT_EQ(rep.lossy_tensors, 4);  // w, w16, nan_w, frozen (2-D floats); the rest lossless
  EXPECT_GT(rep.max_abs_error, 0.0);
  const auto ap = apply_delta({dir / "base", dir / "d", dir / "rebuilt.safetensors"});
  EXPECT_TRUE(ap.lossy);
  EXPECT_EQ(ap.max_abs_error, rep.max_abs_error);
  const double err =
      max_abs_difference(dir / "rebuilt.safetensors", dir / "tuned/model.safetensors");
  EXPECT_LE(err, rep.max_abs_error);
  EXPECT_GE(err, rep.max_abs_error * 0.999);  // the bound is the measured maximum, not slack
  // Half a quantisation step of the largest change (~4e-3 / 127 / 2) plus a float16 rounding.
  EXPECT_LT(rep.max_abs_error, 1e-3);
}

class HfCheckpoint : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    made_ = new TempDir;
    ok_ = make_hf_checkpoints(made_->path);
  }
  static void TearDownTestSuite() {
    delete made_;
    made_ = nullptr;
  }
  static inline TempDir* made_ = nullptr;
  static inline bool ok_ = false;
};

// A random LLaMA made by transformers, then five Adam steps: every tensor changes a little.
TEST_P(HfCheckpoint, LosslessBitwiseAndLossyWithinBound) {
  if (!ok_) GTEST_SKIP() << "no test venv (TESSERA_VENV_PYTHON)";
  TempDir dir;
  const std::string src = *made_ / GetParam();
  const bool sharded = GetParam().find("sharded") != std::string::npos;
  if (sharded) ASSERT_TRUE(fs::exists(src + "/tuned/model.safetensors.index.json"));
  const auto rep =
      create_delta({src + "/base", src + "/tuned", dir / "d", false, Transform::kXor, 3});
  EXPECT_GT(rep.ratio(), 1.0);
  apply_delta({src + "/base", dir / "d", dir / "rebuilt"});
  // Every weight file and the index, byte for byte (config.json is not part of a delta).
  auto want = files_of(src + "/tuned");
  want.erase("config.json");
  want.erase("generation_config.json");
  EXPECT_EQ(files_of(dir / "rebuilt"), want);
  if (!sharded) {
    const auto lossy =
        create_delta({src + "/base", src + "/tuned", dir / "dl", true, Transform::kXor, 3});
    EXPECT_GT(lossy.ratio(), rep.ratio());
    apply_delta({src + "/base", dir / "dl", dir / "rl.safetensors"});
    const double err = max_abs_difference(dir / "rl.safetensors", src + "/tuned/model.safetensors");
    EXPECT_LE(err, lossy.max_abs_error);
    EXPECT_GT(err, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Transformers, HfCheckpoint,
                         ::testing::Values("float32", "bfloat16", "bfloat16_sharded"));

// ---- bad input: one clear error, nothing left behind ----

TEST(Delta, WrongBaseIsRefusedBeforeWriting) {
  TempDir dir;
  write_odd_pair(dir);
  create_delta({dir / "base", dir / "tuned", dir / "d", false, Transform::kXor, 3});
  // Another base: same names, dtypes and shapes, other values.
  auto other = SafetensorsFile::open(dir / "base/model.safetensors");
  std::vector<TensorToWrite> tensors;
  for (const auto& n : other->names()) {
    const auto& e = other->get(n);
    TensorToWrite t{n, e.dtype, e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)};
    if (n == "w") t.bytes[0] ^= 1;  // one bit of the first sampled window
    tensors.push_back(std::move(t));
  }
  fs::create_directories(dir / "other");
  write_safetensors(dir / "other/model.safetensors", tensors);
  const auto before = entries(dir.path);
  expect_error(
      [&] {
        apply_delta({dir / "other", dir / "d", dir / "out"});
      },
      "was made against another base");
  EXPECT_EQ(entries(dir.path), before);
}

TEST(Delta, BaseChangedOutsideTheSamplesIsCaughtByTheTensorHash) {
  TempDir dir;
  std::mt19937 rng(3);
  // 256 KiB: the fingerprint samples its first, middle and last 4 KiB.
  auto big = randn(64 * 1024, rng);
  auto w = randn(8 * 8, rng);
  std::vector<TensorToWrite> base = {tensor("big", DType::kF32, {64, 1024}, big),
                                     tensor("w", DType::kF32, {8, 8}, w)};
  for (auto& v : big) v += 1e-3f;
  std::vector<TensorToWrite> tuned = {tensor("big", DType::kF32, {64, 1024}, big),
                                      tensor("w", DType::kF32, {8, 8}, w)};
  for (const char* d : {"base", "tuned", "changed"}) fs::create_directories(dir / d);
  write_safetensors(dir / "base/model.safetensors", base);
  write_safetensors(dir / "tuned/model.safetensors", tuned);
  create_delta({dir / "base", dir / "tuned", dir / "d", false, Transform::kXor, 3});
  base[0].bytes[100 * 1024] ^= 0x40;  // between the sampled windows
  write_safetensors(dir / "changed/model.safetensors", base);
  const auto before = entries(dir.path);
  expect_error(
      [&] {
        apply_delta({dir / "changed", dir / "d", dir / "out"});
      },
      "tensor 'big' differs from the delta's base");
  expect_error(
      [&] {
        apply_delta({dir / "changed", dir / "d", dir / "out.safetensors"});
      },
      "tensor 'big' differs from the delta's base");
  EXPECT_EQ(entries(dir.path), before);
}

TEST(Delta, MissingTensorsAndShapeMismatches) {
  TempDir dir;
  write_odd_pair(dir);
  create_delta({dir / "base", dir / "tuned", dir / "d", false, Transform::kXor, 3});
  auto base = SafetensorsFile::open(dir / "base/model.safetensors");
  auto copy_without = [&](const std::string& folder, const std::string& drop,
                          const std::vector<int64_t>& reshape) {
    std::vector<TensorToWrite> tensors;
    for (const auto& n : base->names()) {
      if (n == drop && reshape.empty()) continue;
      const auto& e = base->get(n);
      tensors.push_back({n, e.dtype, n == drop ? reshape : e.shape,
                         std::vector<uint8_t>(e.data, e.data + e.nbytes)});
    }
    fs::create_directories(dir / folder);
    write_safetensors(dir / folder + "/model.safetensors", tensors);
  };
  copy_without("no_w", "w", {});
  copy_without("reshaped", "w", {53, 37});
  const auto before = entries(dir.path);
  expect_error(
      [&] {
        apply_delta({dir / "no_w", dir / "d", dir / "out"});
      },
      "has no tensor 'w', which the delta was made against");
  expect_error(
      [&] {
        apply_delta({dir / "reshaped", dir / "d", dir / "out"});
      },
      "tensor 'w' is float32 [53, 37] but the delta's base had float32 [37, 53]");
  // create: a tuned tensor whose shape differs from the base's.
  expect_error(
      [&] {
        create_delta({dir / "reshaped", dir / "tuned", dir / "d2", false, Transform::kXor, 3});
      },
      "tensor 'w' is float32 [37, 53] in --tuned but float32 [53, 37] in --base");
  EXPECT_EQ(entries(dir.path), before);
  expect_error(
      [&] {
        create_delta({dir / "nowhere", dir / "tuned", dir / "d3", false, Transform::kXor, 3});
      },
      "--base '");
  expect_error(
      [&] {
        create_delta({dir / "base", dir / "tuned", dir / "tuned/model.safetensors", false,
                      Transform::kXor, 3});
      },
      "is one of the input files");
}

TEST(Delta, TruncatedOrCorruptDeltasAreRefused) {
  TempDir dir;
  write_odd_pair(dir);
  create_delta({dir / "base", dir / "tuned", dir / "d", false, Transform::kXor, 3});
  const std::string bytes = slurp(dir / "d");
  auto write = [&](const std::string& name, const std::string& data) {
    std::ofstream(dir / name, std::ios::binary) << data;
  };
  write("cut", bytes.substr(0, bytes.size() - 10));
  write("cut_header", bytes.substr(0, 100));
  std::string flipped = bytes;
  flipped[bytes.size() - 200] ^= 0x5a;  // inside the last tensor's stored frame
  write("flipped", flipped);
  const auto before = entries(dir.path);
  expect_error(
      [&] {
        apply_delta({dir / "base", dir / "cut", dir / "out"});
      },
      "is not a readable delta (truncated or corrupt?)");
  expect_error(
      [&] {
        apply_delta({dir / "base", dir / "cut_header", dir / "out"});
      },
      "is not a readable delta (truncated or corrupt?)");
  expect_error(
      [&] {
        apply_delta({dir / "base", dir / "flipped", dir / "out.safetensors"});
      },
      "--delta '");
  expect_error(
      [&] {
        apply_delta({dir / "base", dir / "base/model.safetensors", dir / "out"});
      },
      "is not a Tessera delta");
  EXPECT_EQ(entries(dir.path), before);
}

TEST(Delta, OutputRules) {
  TempDir dir;
  write_odd_pair(dir);
  create_delta({dir / "base", dir / "tuned", dir / "d", false, Transform::kXor, 3});
  fs::create_directories(dir / "exists");
  expect_error(
      [&] {
        apply_delta({dir / "base", dir / "d", dir / "exists"});
      },
      "' exists; name a new folder");
  // A single-file tuned checkpoint rebuilds into a folder or a file; a file may be replaced.
  apply_delta({dir / "base", dir / "d", dir / "r.safetensors"});
  apply_delta({dir / "base", dir / "d", dir / "r.safetensors"});
  EXPECT_EQ(slurp(dir / "r.safetensors"), slurp(dir / "tuned/model.safetensors"));
}

// ---- the binary: CLI and memory ----

struct Run {
  int exit_code = -1;
  long max_rss_kb = 0;
  std::string out, err;
};

long own_status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
  }
  return -1;
}

// Runs argv directly (no shell), so wait4 reports the command's own peak RSS. A child's peak
// starts from its parent's at exec (the kernel records the old address space's high-water mark),
// so this process resets its own (clear_refs 5) first and must itself be small.
Run spawn(const std::vector<std::string>& args, const std::string& dir) {
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
  }
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  const std::string out = dir + "/spawn.out", err = dir + "/spawn.err";
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  Run r;
  if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) return r;
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.max_rss_kb = ru.ru_maxrss;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

TEST(DeltaCli, CreateApplyAndOneLineErrors) {
  TempDir dir;
  write_odd_pair(dir);
  const std::string bin = testing::env_or_die("TESSERA_BIN");
  auto r = spawn({bin, "delta", "create", "--base", dir / "base", "--tuned", dir / "tuned", "--out",
                  dir / "d", "--lossy", "int8"},
                 dir.path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("compression ratio"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("max |error|"), std::string::npos) << r.out;
  r = spawn({bin, "delta", "create", "--base", dir / "base", "--tuned", dir / "tuned", "--out",
             dir / "dx", "--json"},
            dir.path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["ratio"].get<double>(), 0.0);
  EXPECT_EQ(j["tensors"], 8);
  r = spawn({bin, "delta", "apply", "--base", dir / "base", "--delta", dir / "dx", "--out",
             dir / "rebuilt"},
            dir.path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("bitwise exact"), std::string::npos) << r.out;
  EXPECT_EQ(slurp(dir / "rebuilt/model.safetensors"), slurp(dir / "tuned/model.safetensors"));
  // Errors: exactly one line, non-zero exit, nothing written.
  const auto before = entries(dir.path);
  for (const auto& [args, needle] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"apply", "--base", dir / "tuned", "--delta", dir / "dx", "--out", dir / "o"},
            "was made against another base"},
           {{"create", "--base", dir / "base", "--tuned", dir / "nope", "--out", dir / "o"},
            "--tuned '"},
           {{"create", "--base", dir / "base", "--tuned", dir / "tuned", "--out", dir / "o",
             "--lossy", "int4"},
            "--lossy"}}) {
    std::vector<std::string> argv = {bin, "delta"};
    argv.insert(argv.end(), args.begin(), args.end());
    r = spawn(argv, dir.path);
    EXPECT_NE(r.exit_code, 0);
    size_t lines = 0;
    for (size_t p = 0; (p = r.err.find("tessera: error", p)) != std::string::npos; ++p) ++lines;
    EXPECT_EQ(lines, 1u) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  }
  auto after = entries(dir.path);
  std::erase_if(after, [](const std::string& n) { return n.rfind("spawn.", 0) == 0; });
  auto expected = before;
  std::erase_if(expected, [](const std::string& n) { return n.rfind("spawn.", 0) == 0; });
  EXPECT_EQ(after, expected);
}

// Peak RSS of `tessera delta create|apply` on a 88 MiB checkpoint (largest tensor 32 MiB) minus
// the same commands on a tiny checkpoint (the binary, its libraries, MPI): the streamed tools
// hold chunks, not tensors.
TEST(DeltaCli, PeakMemoryStaysBelowTheLargestTensor) {
  TempDir dir;
  const std::string bin = testing::env_or_die("TESSERA_BIN");
  // Weights ~N(0, 0.05) and a fine-tune nudge ~1e-4 (cheap generator: 100 MB of it).
  uint64_t state = 11;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<int64_t>(state >> 11) & 0xfffff) / 1048576.0f - 0.5f;
  };
  auto make = [&](const std::string& name,
                  const std::vector<std::pair<std::string, int64_t>>& sizes) {
    std::vector<TensorToWrite> base, tuned;
    for (const auto& [n, count] : sizes) {
      std::vector<float> v(static_cast<size_t>(count));
      for (auto& x : v) x = 0.1f * next();
      base.push_back(tensor(n, DType::kF32, {count / 1024, 1024}, v));
      for (auto& x : v) x += 2e-4f * next();
      tuned.push_back(tensor(n, DType::kF32, {count / 1024, 1024}, v));
    }
    fs::create_directories(dir / (name + "_base"));
    fs::create_directories(dir / (name + "_tuned"));
    write_safetensors(dir / (name + "_base/model.safetensors"), base);
    write_safetensors(dir / (name + "_tuned/model.safetensors"), tuned);
  };
  const int64_t largest = 8 << 20;  // elements: 32 MiB of float32
  make("big", {{"embed", largest}, {"a", 4 << 20}, {"b", 4 << 20}, {"c", 4 << 20}, {"d", 2 << 20}});
  make("tiny", {{"embed", 4096}});
  auto peak = [&](const std::string& name, const std::vector<std::string>& extra) {
    std::vector<std::string> c = {bin,
                                  "delta",
                                  "create",
                                  "--base",
                                  dir / (name + "_base"),
                                  "--tuned",
                                  dir / (name + "_tuned"),
                                  "--out",
                                  dir / (name + ".d")};
    c.insert(c.end(), extra.begin(), extra.end());
    const auto rc = spawn(c, dir.path);
    EXPECT_EQ(rc.exit_code, 0) << rc.err;
    const auto ra = spawn({bin, "delta", "apply", "--base", dir / (name + "_base"), "--delta",
                           dir / (name + ".d"), "--out", dir / (name + "_out")},
                          dir.path);
    EXPECT_EQ(ra.exit_code, 0) << ra.err;
    fs::remove_all(dir / (name + "_out"));
    return std::pair<long, long>{rc.max_rss_kb, ra.max_rss_kb};
  };
  // The checkpoints' buffers are freed; this process must be far below the tiny runs' peak.
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer keeps freed blocks in its quarantine (256 MB by default) and its allocator
  // keeps their pages: give them back to the system first, so the high-water mark reset below
  // starts from what this process still holds. The `tessera` runs measured here get no
  // quarantine either (each freed tensor would stay resident beside the next one); every other
  // option stays, and DeltaCli.CreateApplyAndOneLineErrors runs the same commands with it.
  __sanitizer_purge_allocator();
  const char* asan_env = std::getenv("ASAN_OPTIONS");
  const std::string asan_before = asan_env ? asan_env : "";
  setenv("ASAN_OPTIONS", (asan_before + ":quarantine_size_mb=0").c_str(), 1);
  struct RestoreAsanOptions {
    std::string value;
    ~RestoreAsanOptions() { setenv("ASAN_OPTIONS", value.c_str(), 1); }
  } restore_asan{asan_before};
#endif
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
  }
  ASSERT_LT(own_status_kb("VmHWM:"), 64 * 1024) << "the test process itself is too large";
  const auto [tiny_c, tiny_a] = peak("tiny", {});  // the binary, its libraries, MPI
  for (const auto& extra :
       {std::vector<std::string>{}, std::vector<std::string>{"--lossy", "int8"}}) {
    const auto [big_c, big_a] = peak("big", extra);
    const double limit_kb = 1.1 * static_cast<double>(largest * 4) / 1024.0;
    const std::string what = extra.empty() ? "lossless" : "int8";
    std::printf(
        "[ %s ] peak RSS: create %ld KB (tiny %ld), apply %ld KB (tiny %ld); largest "
        "tensor + 10%% = %.0f KB\n",
        what.c_str(), big_c, tiny_c, big_a, tiny_a, limit_kb);
    EXPECT_LE(big_c - tiny_c, limit_kb) << what << " create";
    EXPECT_LE(big_a - tiny_a, limit_kb) << what << " apply";
  }
}

}  // namespace
}  // namespace tessera::models::delta
