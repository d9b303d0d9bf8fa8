// CPU bf16 autocast for a training forward (torch 1.13 and 2.x: linear / matmul run in bf16, norms,
// softmax and losses in fp32); restores the previous state when it ends.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace tessera::training {

namespace autocast_detail {
// torch 2.4 replaced the CPU-only calls (deprecated since) with ones that take the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
inline bool cpu_enabled() { return at::autocast::is_autocast_enabled(at::kCPU); }
inline at::ScalarType cpu_dtype() { return at::autocast::get_autocast_dtype(at::kCPU); }
inline void set_cpu(bool on, at::ScalarType dtype) {
  at::autocast::set_autocast_enabled(at::kCPU, on);
  at::autocast::set_autocast_dtype(at::kCPU, dtype);
}
#else
inline bool cpu_enabled() { return at::autocast::is_cpu_enabled(); }
inline at::ScalarType cpu_dtype() { return at::autocast::get_autocast_cpu_dtype(); }
inline void set_cpu(bool on, at::ScalarType dtype) {
  at::autocast::set_cpu_enabled(on);
  at::autocast::set_autocast_cpu_dtype(dtype);
}
#endif
}  // namespace autocast_detail

class AutocastScope {
 public:
  explicit AutocastScope(bool on) : on_(on) {
    if (!on_) return;
    prev_enabled_ = autocast_detail::cpu_enabled();
    prev_dtype_ = autocast_detail::cpu_dtype();
    autocast_detail::set_cpu(true, at::kBFloat16);
  }
  ~AutocastScope() {
    if (!on_) return;
    autocast_detail::set_cpu(prev_enabled_, prev_dtype_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool on_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

}  // namespace tessera::training
