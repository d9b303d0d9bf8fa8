#include "runtime/models/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"

namespace tessera::models {
namespace {

namespace fs = std::filesystem;

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("tessera_st_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const char* name) { return (dir_ / name).string(); }

  // Writes a raw file: 8-byte length, header text, data bytes.
  std::string raw(const char* name, const std::string& header, const std::string& data) {
    std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << data;
    return p;
  }
  void expect_error(const std::string& p, const std::vector<std::string>& mentions) {
    try {
      SafetensorsFile::open(p);
      FAIL() << "expected an error for " << p;
    } catch (const Error& e) {
      for (const auto& m : mentions) {
        EXPECT_NE(e.message().find(m), std::string::npos) << e.message();
      }
    }
  }
  fs::path dir_;
};

std::vector<uint8_t> bytes_of(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST_F(Safetensors, RoundTrip) {
  std::vector<TensorToWrite> ts;
  ts.push_back({"a.weight", DType::kF32, {2, 3}, bytes_of({1, 2, 3, 4, 5, 6})});
  ts.push_back({"b", DType::kI64, {2}, std::vector<uint8_t>(16, 0)});
  ts.back().bytes[0] = 7;
  ts.push_back({"scalar", DType::kF32, {}, bytes_of({3.5f})});
  ts.push_back({"empty", DType::kBF16, {0, 4}, {}});
  write_safetensors(path("m.safetensors"), ts, {{"format", "pt"}});

  auto f = SafetensorsFile::open(path("m.safetensors"));
  EXPECT_EQ(f->names().size(), 4u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const auto& a = f->get("a.weight");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(a.nbytes, 24u);
  float got[6];
  std::memcpy(got, a.data, 24);
  EXPECT_EQ(got[5], 6.0f);
  EXPECT_EQ(f->get("b").data[0], 7);
  EXPECT_EQ(f->get("scalar").numel(), 1);
  EXPECT_EQ(f->get("empty").nbytes, 0u);
  // Data starts 8-byte aligned, as the reference writer guarantees.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f->get("b").data) % 8, 0u);
}

TEST_F(Safetensors, MissingTensorIsNamed) {
  write_safetensors(path("m.safetensors"), {{"x", DType::kF32, {1}, bytes_of({1})}});
  auto f = SafetensorsFile::open(path("m.safetensors"));
  try {
    f->get("y");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("'y' not found"), std::string::npos);
  }
}

TEST_F(Safetensors, MalformedFilesGiveClearErrors) {
  expect_error(path("absent.safetensors"), {"cannot open", "absent.safetensors"});
  {
    std::ofstream(path("short")) << "abc";
    expect_error(path("short"), {"shorter than the 8-byte header length"});
  }
  expect_error(raw("not_json", "{not json", ""), {"not valid JSON"});
  expect_error(raw("bad_dtype", R"({"t":{"dtype":"F13","shape":[1],"data_offsets":[0,4]}})",
                   std::string(4, '\0')),
               {"tensor 't'", "F13"});
  expect_error(raw("out_of_range", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                   std::string(4, '\0')),
               {"tensor 't'", "fall outside"});
  expect_error(raw("size_mismatch", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                   std::string(8, '\0')),
               {"tensor 't'", "holds 8 bytes", "need 12"});
  expect_error(raw("overlap",
                   R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                   std::string(12, '\0')),
               {"overlap"});
  expect_error(raw("no_offsets", R"({"t":{"dtype":"F32","shape":[1]}})", std::string(4, '\0')),
               {"tensor 't'", "data_offsets"});
  expect_error(raw("neg_shape", R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                   std::string(4, '\0')),
               {"tensor 't'", "negative"});
}

TEST_F(Safetensors, ShapeWhoseElementCountWrapsIsRefused) {
  // 2^32 x 2^32 elements wrap to 0 in 64 bits, which used to match an empty byte range and hand
  // torch a 2^64-element view of no data.
  expect_error(raw("wrap",
                   R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],)"
                   R"("data_offsets":[0,0]}})",
                   ""),
               {"tensor 't'", "64 bits"});
  // 2^62 elements fit in int64 but 2^62 x 4 bytes wraps to 0 as well.
  expect_error(raw("wrap_bytes",
                   R"({"t":{"dtype":"F32","shape":[4611686018427387904],)"
                   R"("data_offsets":[0,0]}})",
                   ""),
               {"tensor 't'", "more than 2^64"});
}

TEST_F(Safetensors, HeaderLengthBeyondFile) {
  std::string p = path("lying_length");
  std::ofstream out(p, std::ios::binary);
  uint64_t n = 1000;
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << "{}";
  out.close();
  expect_error(p, {"header length 1000", "exceeds the file"});
}

TEST_F(Safetensors, WriterRejectsWrongByteCount) {
  EXPECT_THROW(write_safetensors(path("w"), {{"x", DType::kF32, {2}, bytes_of({1})}}), Error);
  EXPECT_FALSE(fs::exists(path("w")));
}

}  // namespace
}  // namespace tessera::models
