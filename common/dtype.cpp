#include "common/dtype.h"

#include <bit>
#include <cmath>

#include "common/error.h"

namespace tessera {

namespace {
struct DTypeInfo {
  DType dtype;
  size_t size;
  std::string_view name;
  std::string_view st_name;
  bool floating;
};
constexpr DTypeInfo kInfos[] = {
    {DType::kF64, 8, "float64", "F64", true},
    {DType::kF32, 4, "float32", "F32", true},
    {DType::kF16, 2, "float16", "F16", true},
    {DType::kBF16, 2, "bfloat16", "BF16", true},
    {DType::kF8E4M3, 1, "float8_e4m3", "F8_E4M3", true},
    {DType::kI64, 8, "int64", "I64", false},
    {DType::kI32, 4, "int32", "I32", false},
    {DType::kI16, 2, "int16", "I16", false},
    {DType::kI8, 1, "int8", "I8", false},
    {DType::kU8, 1, "uint8", "U8", false},
    {DType::kBool, 1, "bool", "BOOL", false},
};
const DTypeInfo& info(DType d) { return kInfos[static_cast<int>(d)]; }
}  // namespace

size_t dtype_size(DType d) { return info(d).size; }
std::string_view dtype_name(DType d) { return info(d).name; }
std::string_view safetensors_name(DType d) { return info(d).st_name; }
bool is_floating(DType d) { return info(d).floating; }

DType parse_dtype(std::string_view name) {
  for (const auto& i : kInfos) {
    if (name == i.name || name == i.st_name) return i.dtype;
  }
  if (name == "fp32" || name == "float") return DType::kF32;
  if (name == "fp16" || name == "half") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  if (name == "fp64" || name == "double") return DType::kF64;
  if (name == "fp8" || name == "fp8_e4m3") return DType::kF8E4M3;
  TESSERA_FAIL("unknown dtype '", name,
               "' (expected one of float32, float16, bfloat16, float64, fp8_e4m3, int64, int32, "
               "int16, int8, uint8, bool)");
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24
    float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t float_to_half(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return sign | (abs > 0x7f800000u ? 0x7e00 : 0x7c00);  // nan / inf
  if (abs >= 0x477ff000u) return sign | 0x7c00;  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {
    // subnormal half: value / 2^-24, rounded to nearest even
    const float v = std::bit_cast<float>(abs);
    const float scaled = v * 16777216.0f;  // 2^24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // nan
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace tessera
