#include "common/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "common/error.h"

namespace tessera {
namespace {

TEST(DType, SizesAndNames) {
  struct Row {
    DType d;
    size_t size;
    const char* name;
    const char* st;
  };
  for (const Row& r :
       {Row{DType::kF64, 8, "float64", "F64"}, Row{DType::kF32, 4, "float32", "F32"},
        Row{DType::kF16, 2, "float16", "F16"}, Row{DType::kBF16, 2, "bfloat16", "BF16"},
        Row{DType::kF8E4M3, 1, "float8_e4m3", "F8_E4M3"}, Row{DType::kI64, 8, "int64", "I64"},
        Row{DType::kI8, 1, "int8", "I8"}, Row{DType::kBool, 1, "bool", "BOOL"}}) {
    EXPECT_EQ(dtype_size(r.d), r.size) << r.name;
    EXPECT_EQ(dtype_name(r.d), r.name);
    EXPECT_EQ(safetensors_name(r.d), r.st);
    EXPECT_EQ(parse_dtype(r.name), r.d);
    EXPECT_EQ(parse_dtype(r.st), r.d);
  }
  EXPECT_EQ(parse_dtype("bf16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("fp16"), DType::kF16);
}

TEST(DType, UnknownNameIsNamed) {
  try {
    parse_dtype("float13");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'float13'"), std::string::npos);
  }
}

// Exhaustive: every finite half converts to float and back unchanged.
TEST(DType, HalfRoundTripAllValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_half(f), h) << "half bits " << h;
  }
}

TEST(DType, HalfKnownValuesAndRounding) {
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);       // rounds to infinity
  EXPECT_EQ(float_to_half(5.9604645e-8f), 0x0001);  // smallest subnormal
  // 1 + 2^-11 is halfway between 1 and the next half: ties to even (1.0).
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(NAN))));
}

TEST(DType, Bf16RoundTripAndRounding) {
  for (uint32_t b = 0; b < 0x10000; b += 7) {
    const float f = bf16_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_bf16(f), b);
  }
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1+2^-7: ties to even.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
}

}  // namespace
}  // namespace tessera
