// The CUDA segmented LoRA kernels against the fp64 CPU reference on the very same view (device
// copies of the inputs), for every dtype, mixed ranks, NaN padding, empty and base-only segments.
// Compiled wherever nvcc exists; skips on machines without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/common/device_error.h"
#include "kernels/lora/lora_sgmv.h"
#include "kernels/quant/kv_format.h"

namespace tessera::kernels {
namespace {

template <typename T>
T* to_device(const std::vector<T>& host) {
  T* d = nullptr;
  if (cudaMalloc(reinterpret_cast<void**>(&d), std::max<size_t>(1, host.size()) * sizeof(T)) !=
      cudaSuccess)
    return nullptr;
  cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

// Host buffer of n elements of `dtype` from floats.
std::vector<uint8_t> encode(DType dtype, const std::vector<float>& v) {
  const size_t es = dtype == DType::kF32 ? 4 : 2;
  std::vector<uint8_t> out(v.size() * es);
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? kv_float_to_half(v[i]) : kv_float_to_bf16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

float decode(DType dtype, const std::vector<uint8_t>& buf, size_t i) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, buf.data() + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, buf.data() + 2 * i, 2);
  return dtype == DType::kF16 ? kv_half_to_float(h) : kv_bf16_to_float(h);
}

class LoraSgmvCuda : public ::testing::TestWithParam<DType> {};

TEST_P(LoraSgmvCuda, MatchesReference) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    GTEST_SKIP() << "no CUDA device";
  }
  const DType dtype = GetParam();
  const int64_t in = 133, out = 71, rmax = 64;
  const std::vector<int32_t> ranks{1, 8, 16, 64};
  const std::vector<int32_t> seg_rows{0, 1, 7, 13, 0, 2, 31};
  const std::vector<int32_t> seg_adapter{0, -1, 1, 1, 2, 3, 0};
  std::vector<int32_t> indptr{0};
  for (int n : seg_rows) indptr.push_back(indptr.back() + n);
  const int64_t rows = indptr.back(), n_ad = static_cast<int64_t>(ranks.size());
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x(rows * in), y(rows * out), a(n_ad * rmax * in, nan),
      b(n_ad * out * rmax, nan);
  for (auto& e : x) e = normal(rng);
  for (auto& e : y) e = normal(rng);
  std::vector<float> scales;
  for (int64_t i = 0; i < n_ad; ++i) {
    for (int64_t k = 0; k < ranks[i]; ++k) {
      for (int64_t j = 0; j < in; ++j) a[(i * rmax + k) * in + j] = normal(rng) / 12.0f;
      for (int64_t o = 0; o < out; ++o) b[(i * out + o) * rmax + k] = normal(rng);
    }
    scales.push_back(16.0f / ranks[i]);
  }
  auto hx = encode(dtype, x), hy = encode(dtype, y), ha = encode(dtype, a), hb = encode(dtype, b);
  LoraSgmvView v;
  v.x_row_stride = in;
  v.y_row_stride = out;
  v.num_rows = rows;
  v.in_features = in;
  v.out_features = out;
  v.num_segments = static_cast<int64_t>(seg_rows.size());
  v.num_adapters = n_ad;
  v.r_max = rmax;
  v.dtype = dtype;
  // Reference on the host.
  auto ref_y = hy;
  LoraSgmvView h = v;
  h.x = hx.data();
  h.y = ref_y.data();
  h.a = ha.data();
  h.b = hb.data();
  h.seg_indptr = indptr.data();
  h.seg_adapter = seg_adapter.data();
  h.ranks = ranks.data();
  h.scales = scales.data();
  lora_sgmv_ref(h);
  // The same view on the device.
  auto* dx = to_device(hx);
  auto* dy = to_device(hy);
  auto* da = to_device(ha);
  auto* db = to_device(hb);
  auto* dind = to_device(indptr);
  auto* dad = to_device(seg_adapter);
  auto* dr = to_device(ranks);
  auto* ds = to_device(scales);
  auto* work = to_device(std::vector<float>(rows * rmax, 0.0f));
  ASSERT_TRUE(dx && dy && da && db && dind && dad && dr && ds && work);
  LoraSgmvView d = v;
  d.x = dx;
  d.y = dy;
  d.a = da;
  d.b = db;
  d.seg_indptr = dind;
  d.seg_adapter = dad;
  d.ranks = dr;
  d.scales = ds;
  ASSERT_EQ(lora_sgmv_cuda(d, work, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> got(hy.size());
  cudaMemcpy(got.data(), dy, got.size(), cudaMemcpyDeviceToHost);
  const double rtol = dtype == DType::kF32 ? 2e-5 : dtype == DType::kF16 ? 1.0 / 1024 : 1.0 / 128;
  for (int64_t i = 0; i < rows * out; ++i) {
    const float g = decode(dtype, got, i), w = decode(dtype, ref_y, i);
    ASSERT_FALSE(std::isnan(g)) << "element " << i;
    ASSERT_LE(std::fabs(g - w), rtol * (std::fabs(w) + 1.0)) << "element " << i;
  }
  for (void* p : {static_cast<void*>(dx), static_cast<void*>(dy), static_cast<void*>(da),
                  static_cast<void*>(db), static_cast<void*>(dind), static_cast<void*>(dad),
                  static_cast<void*>(dr), static_cast<void*>(ds), static_cast<void*>(work)}) {
    cudaFree(p);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, LoraSgmvCuda,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16));

// Bad metadata is recorded on the device by the check kernel, without a synchronisation, and
// raised by the host with lora_sgmv_check()'s message (what the CPU path throws).
TEST(LoraSgmvCudaErrors, BadMetadataIsRecordedOnTheDeviceAndRaisedLater) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    GTEST_SKIP() << "no CUDA device";
  }
  const DeviceErrorSlot slot = device_error_slot(0);
  EXPECT_NO_THROW(check_device_errors(0));
  const int64_t in = 16, out = 8, rmax = 4, rows = 6;
  struct Meta {
    std::vector<int32_t> indptr{0, 2, 6}, adapter{0, 1}, ranks{2, 4};
    std::vector<float> scales{1.0f, 0.5f};
  };
  struct Case {
    void (*spoil)(Meta&);
    MetadataCheck check;
    int64_t i, value, limit;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const Case cases[] = {
      {[](Meta& m) { m.indptr[0] = 1; }, MetadataCheck::kSegIndptrFirst, 0, 1, 0},
      {[](Meta& m) { m.indptr[2] = 5; }, MetadataCheck::kSegIndptrLast, 2, 5, rows},
      {[](Meta& m) { m.indptr[1] = 7; }, MetadataCheck::kSegIndptrDecreasing, 1, 7, 6},
      {[](Meta& m) { m.adapter[1] = 2; }, MetadataCheck::kSegAdapterOutOfRange, 1, 2, 2},
      {[](Meta& m) { m.ranks[0] = 5; }, MetadataCheck::kRankOutOfRange, 0, 5, rmax},
      {[](Meta& m) { m.scales[1] = std::numeric_limits<float>::infinity(); },
       MetadataCheck::kScaleNotFinite, 1, static_cast<int64_t>(std::bit_cast<uint32_t>(inf)), 0},
  };
  for (const Case& c : cases) {
    Meta m;
    c.spoil(m);
    std::vector<float> x(rows * in, 0.25f), y(rows * out, 1.0f), a(2 * rmax * in, 0.1f),
        b(2 * out * rmax, 0.1f);
    LoraSgmvView v;
    v.x_row_stride = in;
    v.y_row_stride = out;
    v.num_rows = rows;
    v.in_features = in;
    v.out_features = out;
    v.num_segments = 2;
    v.num_adapters = 2;
    v.r_max = rmax;
    v.dtype = DType::kF32;
    // The CPU message for the same view.
    std::string cpu;
    LoraSgmvView h = v;
    h.x = x.data();
    h.y = y.data();
    h.a = a.data();
    h.b = b.data();
    h.seg_indptr = m.indptr.data();
    h.seg_adapter = m.adapter.data();
    h.ranks = m.ranks.data();
    h.scales = m.scales.data();
    try {
      lora_sgmv_check(h);
      ADD_FAILURE() << "the CPU check accepted a bad view";
    } catch (const Error& e) {
      cpu = e.message();
    }
    EXPECT_EQ(cpu, metadata_error_message(c.check, c.i, 0, c.value, c.limit));
    auto* dx = to_device(x);
    auto* dy = to_device(y);
    auto* da = to_device(a);
    auto* db = to_device(b);
    auto* dind = to_device(m.indptr);
    auto* dad = to_device(m.adapter);
    auto* dr = to_device(m.ranks);
    auto* ds = to_device(m.scales);
    auto* work = to_device(std::vector<float>(rows * rmax, 0.0f));
    ASSERT_TRUE(dx && dy && da && db && dind && dad && dr && ds && work);
    LoraSgmvView d = v;
    d.x = dx;
    d.y = dy;
    d.a = da;
    d.b = db;
    d.seg_indptr = dind;
    d.seg_adapter = dad;
    d.ranks = dr;
    d.scales = ds;
    d.error = slot;
    ASSERT_EQ(lora_sgmv_cuda(d, work, nullptr), 0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    try {
      check_device_errors(0);
      ADD_FAILURE() << "no error recorded for " << cpu;
    } catch (const Error& e) {
      EXPECT_EQ(e.message(), cpu);
    }
    EXPECT_NO_THROW(check_device_errors(0)) << "raised once";
    for (void* p : {static_cast<void*>(dx), static_cast<void*>(dy), static_cast<void*>(da),
                    static_cast<void*>(db), static_cast<void*>(dind), static_cast<void*>(dad),
                    static_cast<void*>(dr), static_cast<void*>(ds), static_cast<void*>(work)}) {
      cudaFree(p);
    }
  }
}

}  // namespace
}  // namespace tessera::kernels
