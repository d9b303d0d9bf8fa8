// Element types as Tessera names them on disk (safetensors), in cache specs and in kernels. Kept
// free of torch so that cache management and file parsing do not pay for torch headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tessera {

enum class DType : uint8_t { kF64, kF32, kF16, kBF16, kF8E4M3, kI64, kI32, kI16, kI8, kU8, kBool };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);        // "float32", "bfloat16", ...
std::string_view safetensors_name(DType dtype);  // "F32", "BF16", ...
// Accepts our names ("float32", "fp32", "bf16") and safetensors' ("F32"); throws naming the value.
DType parse_dtype(std::string_view name);
bool is_floating(DType dtype);

// fp16 / bf16 conversions for code that handles raw bytes (loaders, references).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);  // round to nearest even
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);  // round to nearest even

}  // namespace tessera
