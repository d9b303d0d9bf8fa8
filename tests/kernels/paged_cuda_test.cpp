// The CUDA paged kernels (attention, KV append, KV quantisation, LSE merge) against the CPU
// reference on the very same views, sweeping block sizes 1 / 3 / 16, prime batch sizes, odd head
// dims and every page format. Torch-free (libtorch may be CPU-only); skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/common/device_error.h"
#include "kernels/merge/lse_merge.h"
#include "kernels/paged/paged_attention.h"
#include "kernels/paged/paged_kv_append.h"
#include "kernels/quant/kv_quant.h"

// tests/kernels/fp8_intrinsic_cuda.cu
int encode_e4m3_both_cuda(const float* x, uint8_t* cuda_codes, uint8_t* our_codes, int n);

namespace tessera::kernels {
namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

// A device copy of a host vector, freed on scope exit.
class DeviceBuffer {
 public:
  // Filled with 0xff bytes (NaN floats) until written, so an output element a kernel leaves
  // unwritten fails the comparison instead of matching by luck.
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), cudaSuccess);
    EXPECT_EQ(cudaMemset(ptr_, 0xff, bytes == 0 ? 1 : bytes), cudaSuccess);
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), bytes_, cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  template <typename T>
  std::vector<T> to_host() const {
    std::vector<T> h(bytes_ / sizeof(T));
    EXPECT_EQ(cudaMemcpy(h.data(), ptr_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      ASSERT_EQ(got[i], want[i]) << what << " at " << i;
      continue;
    }
    ASSERT_LE(std::fabs(got[i] - want[i]), tol * (1.0 + std::fabs(want[i])))
        << what << " at " << i << ": " << got[i] << " vs " << want[i];
  }
}

// A paged cache in host memory filled through the reference append, plus the queries.
struct HostCase {
  int num_seqs, block_size, hq, hkv, dk, dv, window, chunk;
  KvDType dtype;
  std::vector<int32_t> lens, q_starts, block_tables;
  int max_blocks = 0, num_blocks = 0;
  std::vector<uint8_t> k, v;
  std::vector<float> k_scale, v_scale, q;
};

HostCase make_case(int num_seqs, int block_size, int hq, int hkv, int dk, int dv, KvDType dtype,
                   int mode, int window, int chunk, uint32_t seed) {
  HostCase c{num_seqs, block_size, hq, hkv, dk, dv, window, chunk, dtype};
  std::mt19937 rng(seed);
  c.q_starts.push_back(0);
  int total_blocks = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const int len = std::uniform_int_distribution<int>(1, 150)(rng);
    const int q_len = mode == 0   ? 1
                      : mode == 1 ? std::uniform_int_distribution<int>(1, len)(rng)
                                  : len;
    c.lens.push_back(len);
    c.q_starts.push_back(c.q_starts.back() + q_len);
    const int blocks = (len + block_size - 1) / block_size;
    total_blocks += blocks;
    c.max_blocks = std::max(c.max_blocks, blocks);
  }
  c.num_blocks = total_blocks + 1;
  std::vector<int32_t> ids(total_blocks);
  for (int i = 0; i < total_blocks; ++i) ids[i] = i + 1;
  std::shuffle(ids.begin(), ids.end(), rng);
  c.block_tables.assign(static_cast<size_t>(num_seqs) * c.max_blocks, 0);
  const size_t slots = static_cast<size_t>(c.num_blocks) * block_size * hkv;
  c.k.assign(slots * dk * kv_elem_bytes(dtype), 0);
  c.v.assign(slots * dv * kv_elem_bytes(dtype), 0);
  if (kv_is_quantised(dtype)) {
    c.k_scale.assign(slots, 0.0f);
    c.v_scale.assign(slots, 0.0f);
  }
  int next = 0;
  std::vector<int64_t> slot_mapping;
  for (int s = 0; s < num_seqs; ++s) {
    for (int p = 0; p < c.lens[s]; ++p) {
      if (p % block_size == 0) c.block_tables[s * c.max_blocks + p / block_size] = ids[next++];
      slot_mapping.push_back(
          static_cast<int64_t>(c.block_tables[s * c.max_blocks + p / block_size]) * block_size +
          p % block_size);
    }
  }
  const auto tokens = static_cast<int64_t>(slot_mapping.size());
  auto key = randn(tokens * hkv * dk, rng);
  auto value = randn(tokens * hkv * dv, rng);
  PagedKvAppendView a;
  a.key = key.data();
  a.value = value.data();
  a.slot_mapping = slot_mapping.data();
  a.cache = PagedKv{c.k.data(), c.v.data(), c.k_scale.empty() ? nullptr : c.k_scale.data(),
                    c.v_scale.empty() ? nullptr : c.v_scale.data()};
  a.cache.k_block_stride = static_cast<int64_t>(block_size) * hkv * dk;
  a.cache.v_block_stride = static_cast<int64_t>(block_size) * hkv * dv;
  a.cache.k_scale_block_stride = a.cache.v_scale_block_stride = block_size * hkv;
  a.cache.num_blocks = c.num_blocks;
  a.cache.block_size = block_size;
  a.cache.num_kv_heads = hkv;
  a.cache.head_dim_k = dk;
  a.cache.head_dim_v = dv;
  a.cache.dtype = dtype;
  a.key_stride[0] = hkv * dk;
  a.key_stride[1] = dk;
  a.value_stride[0] = hkv * dv;
  a.value_stride[1] = dv;
  a.num_tokens = tokens;
  paged_kv_append_ref(a);
  c.q = randn(static_cast<size_t>(c.q_starts.back()) * hq * dk, rng);
  return c;
}

PagedAttentionView view_of(const HostCase& c, const float* q, void* k, void* v, float* ks,
                           float* vs, const int32_t* bt, const int32_t* lens, const int32_t* qs,
                           float* out, float* lse) {
  PagedAttentionView a;
  a.q = q;
  a.kv = PagedKv{k, v, ks, vs};
  a.kv.k_block_stride = static_cast<int64_t>(c.block_size) * c.hkv * c.dk;
  a.kv.v_block_stride = static_cast<int64_t>(c.block_size) * c.hkv * c.dv;
  a.kv.k_scale_block_stride = a.kv.v_scale_block_stride = c.block_size * c.hkv;
  a.kv.num_blocks = c.num_blocks;
  a.kv.block_size = c.block_size;
  a.kv.num_kv_heads = c.hkv;
  a.kv.head_dim_k = c.dk;
  a.kv.head_dim_v = c.dv;
  a.kv.dtype = c.dtype;
  a.block_tables = bt;
  a.seq_lens = lens;
  a.q_starts = qs;
  a.out = out;
  a.lse = lse;
  a.q_stride[0] = static_cast<int64_t>(c.hq) * c.dk;
  a.q_stride[1] = c.dk;
  a.total_q = c.q_starts.back();
  a.num_seqs = c.num_seqs;
  a.max_blocks_per_seq = c.max_blocks;
  a.num_q_heads = c.hq;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
  a.window = c.window;
  a.chunk = c.chunk;
  return a;
}

void check_attention(const HostCase& c) {
  const size_t out_n = static_cast<size_t>(c.q_starts.back()) * c.hq * c.dv;
  const size_t lse_n = static_cast<size_t>(c.q_starts.back()) * c.hq;
  std::vector<float> out_ref(out_n), lse_ref(lse_n);
  auto k = c.k, v = c.v;
  auto ks = c.k_scale, vs = c.v_scale;
  paged_attention_ref(view_of(c, c.q.data(), k.data(), v.data(), ks.empty() ? nullptr : ks.data(),
                              vs.empty() ? nullptr : vs.data(), c.block_tables.data(),
                              c.lens.data(), c.q_starts.data(), out_ref.data(), lse_ref.data()));
  DeviceBuffer dq(c.q), dk(c.k), dv(c.v), dbt(c.block_tables), dl(c.lens), dqs(c.q_starts);
  DeviceBuffer dks(c.k_scale), dvs(c.v_scale);
  DeviceBuffer dout(out_n * sizeof(float)), dlse(lse_n * sizeof(float));
  auto view = view_of(c, dq.as<float>(), dk.as<void>(), dv.as<void>(),
                      c.k_scale.empty() ? nullptr : dks.as<float>(),
                      c.v_scale.empty() ? nullptr : dvs.as<float>(), dbt.as<int32_t>(),
                      dl.as<int32_t>(), dqs.as<int32_t>(), dout.as<float>(), dlse.as<float>());
  ASSERT_EQ(paged_attention_cuda(view, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  expect_close(dout.to_host<float>(), out_ref, 1e-4, "out");
  expect_close(dlse.to_host<float>(), lse_ref, 1e-4, "lse");
}

TEST(PagedCuda, AttentionMatchesReference) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 1;
  for (KvDType dt :
       {KvDType::kF32, KvDType::kF16, KvDType::kBF16, KvDType::kI8, KvDType::kF8E4M3}) {
    for (int bs : {1, 3, 16}) {
      for (int mode = 0; mode < 3; ++mode) {
        const int window = seed % 3 == 1 ? 17 : 0, chunk = seed % 4 == 2 ? 32 : 0;
        SCOPED_TRACE("dtype=" + std::to_string(static_cast<int>(dt)) + " bs=" + std::to_string(bs) +
                     " mode=" + std::to_string(mode));
        check_attention(
            make_case(mode == 2 ? 3 : 7, bs, 8, 2, 24, 40, dt, mode, window, chunk, seed++));
      }
    }
  }
  check_attention(make_case(5, 16, 32, 8, 128, 128, KvDType::kF32, 0, 0, 0, 99));
  check_attention(make_case(1, 16, 1, 1, 8, 8, KvDType::kF16, 2, 0, 0, 98));
  // Head dims above the 128 threads (strided loops over q and acc), K and V dims different.
  check_attention(make_case(3, 16, 4, 2, 160, 200, KvDType::kBF16, 1, 40, 0, 97));
}

TEST(PagedCuda, AppendWritesTheReferencePages) {
  SKIP_WITHOUT_GPU();
  for (KvDType dt :
       {KvDType::kF32, KvDType::kF16, KvDType::kBF16, KvDType::kI8, KvDType::kF8E4M3}) {
    std::mt19937 rng(7);
    const int nb = 5, bs = 3, h = 3, d = 40, tokens = 9;
    auto key = randn(tokens * h * d, rng, 4.0f), value = randn(tokens * h * d, rng);
    std::vector<int64_t> slots = {3, 4, -1, 14, 5, 6, 7, 8, 9};
    const size_t bytes = static_cast<size_t>(nb) * bs * h * d * kv_elem_bytes(dt);
    std::vector<uint8_t> k(bytes, 0), v(bytes, 0);
    std::vector<float> ks(nb * bs * h, 0.0f), vs(nb * bs * h, 0.0f);
    DeviceBuffer dkey(key), dvalue(value), dslots(slots), dk(k), dv(v), dks(ks), dvs(vs);
    PagedKvAppendView a;
    a.cache.block_size = bs;
    a.cache.num_blocks = nb;
    a.cache.num_kv_heads = h;
    a.cache.head_dim_k = a.cache.head_dim_v = d;
    a.cache.k_block_stride = a.cache.v_block_stride = bs * h * d;
    a.cache.k_scale_block_stride = a.cache.v_scale_block_stride = bs * h;
    a.cache.dtype = dt;
    a.key_stride[0] = a.value_stride[0] = h * d;
    a.key_stride[1] = a.value_stride[1] = d;
    a.num_tokens = tokens;
    PagedKvAppendView host = a, dev = a;
    host.key = key.data();
    host.value = value.data();
    host.slot_mapping = slots.data();
    host.cache.k = k.data();
    host.cache.v = v.data();
    host.cache.k_scale = ks.data();
    host.cache.v_scale = vs.data();
    dev.key = dkey.as<float>();
    dev.value = dvalue.as<float>();
    dev.slot_mapping = dslots.as<int64_t>();
    dev.cache.k = dk.as<void>();
    dev.cache.v = dv.as<void>();
    dev.cache.k_scale = dks.as<float>();
    dev.cache.v_scale = dvs.as<float>();
    paged_kv_append_ref(host);
    ASSERT_EQ(paged_kv_append_cuda(dev, nullptr), 0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dk.to_host<uint8_t>(), k) << static_cast<int>(dt);
    EXPECT_EQ(dv.to_host<uint8_t>(), v) << static_cast<int>(dt);
    EXPECT_EQ(dks.to_host<float>(), ks);
    EXPECT_EQ(dvs.to_host<float>(), vs);
  }
}

TEST(PagedCuda, QuantiseAndDequantiseMatchReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(8);
  const int rows = 301, d = 72;
  auto x = randn(static_cast<size_t>(rows) * d, rng, 3.0f);
  for (int i = 0; i < d; ++i) x[i] = 0.0f;  // an all-zero row
  for (KvDType dt : {KvDType::kI8, KvDType::kF8E4M3}) {
    std::vector<uint8_t> q(static_cast<size_t>(rows) * d);
    std::vector<float> scale(rows), back(x.size());
    kv_quantise_ref({x.data(), q.data(), scale.data(), d, rows, d, dt});
    kv_dequantise_ref({q.data(), scale.data(), back.data(), rows, d, dt});
    DeviceBuffer dx(x), dq(q.size()), ds(rows * sizeof(float)), dback(x.size() * sizeof(float));
    ASSERT_EQ(
        kv_quantise_cuda({dx.as<float>(), dq.as<void>(), ds.as<float>(), d, rows, d, dt}, nullptr),
        0);
    ASSERT_EQ(kv_dequantise_cuda({dq.as<void>(), ds.as<float>(), dback.as<float>(), rows, d, dt},
                                 nullptr),
              0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dq.to_host<uint8_t>(), q);
    EXPECT_EQ(ds.to_host<float>(), scale);
    EXPECT_EQ(dback.to_host<float>(), back);
  }
}

// Tessera's e4m3 encoder (shared by CPU and CUDA kernels) against CUDA's own conversion and the
// CPU exhaustive-search reference, on every rounding midpoint and on random values.
TEST(PagedCuda, E4M3EncoderMatchesCudaConversion) {
  SKIP_WITHOUT_GPU();
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           448.0f,
                           449.0f,
                           464.0f,
                           1e9f,
                           -1e9f,
                           std::numeric_limits<float>::infinity(),
                           std::ldexp(1.0f, -10)};
  for (int c = 0; c < 0x7e; ++c) {
    const float a = e4m3_to_float(static_cast<uint8_t>(c));
    const float b = e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = 0.5f * (a + b);
    for (float y : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), a}) {
      xs.push_back(y);
      xs.push_back(-y);
    }
  }
  std::mt19937 rng(10);
  auto r = randn(20000, rng, 100.0f);
  xs.insert(xs.end(), r.begin(), r.end());
  const int n = static_cast<int>(xs.size());
  DeviceBuffer dx(xs), dcuda(static_cast<size_t>(n)), dours(static_cast<size_t>(n));
  ASSERT_EQ(encode_e4m3_both_cuda(dx.as<float>(), dcuda.as<uint8_t>(), dours.as<uint8_t>(), n), 0);
  const auto cuda_codes = dcuda.to_host<uint8_t>();
  const auto our_codes = dours.to_host<uint8_t>();
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(our_codes[i], cuda_codes[i]) << xs[i];
    ASSERT_EQ(our_codes[i], float_to_e4m3_ref(xs[i])) << xs[i];
  }
}

TEST(PagedCuda, LseMergeMatchesReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  const int parts = 3, rows = 97, d = 40;
  auto outs = randn(static_cast<size_t>(parts) * rows * d, rng);
  auto lses = randn(static_cast<size_t>(parts) * rows, rng, 4.0f);
  lses[5] = -std::numeric_limits<float>::infinity();
  for (int p = 0; p < parts; ++p) lses[p * rows + 7] = -std::numeric_limits<float>::infinity();
  std::vector<float> out(static_cast<size_t>(rows) * d), lse(rows);
  lse_merge_ref({outs.data(), lses.data(), out.data(), lse.data(), parts, rows, d});
  DeviceBuffer douts(outs), dlses(lses), dout(out.size() * sizeof(float)),
      dlse(rows * sizeof(float));
  ASSERT_EQ(lse_merge_cuda({douts.as<float>(), dlses.as<float>(), dout.as<float>(),
                            dlse.as<float>(), parts, rows, d},
                           nullptr),
            0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  expect_close(dout.to_host<float>(), out, 1e-5, "out");
  expect_close(dlse.to_host<float>(), lse, 1e-5, "lse");
}

// Device-side metadata checks: a block id outside the cache, a too-long sequence and a slot beyond
// the cache are recorded on the device without a synchronisation and raised by the host with the
// CPU path's message; the bad rows come out NaN, the good ones exact, nothing out of bounds is
// touched (compute-sanitizer memcheck runs this test in scripts/gpu_check.sh).
TEST(PagedCuda, BadMetadataIsRecordedOnTheDeviceAndRaisedLater) {
  SKIP_WITHOUT_GPU();
  const DeviceErrorSlot slot = device_error_slot(0);
  EXPECT_NO_THROW(check_device_errors(0));
  HostCase c = make_case(3, 4, 4, 2, 16, 16, KvDType::kF32, 0, 0, 0, 5);
  const size_t out_n = static_cast<size_t>(c.q_starts.back()) * c.hq * c.dv;
  const size_t lse_n = static_cast<size_t>(c.q_starts.back()) * c.hq;
  std::vector<float> out_ref(out_n), lse_ref(lse_n);
  {
    auto k = c.k, v = c.v;
    paged_attention_ref(view_of(c, c.q.data(), k.data(), v.data(), nullptr, nullptr,
                                c.block_tables.data(), c.lens.data(), c.q_starts.data(),
                                out_ref.data(), lse_ref.data()));
  }
  struct Spoil {
    int seq;
    bool long_len;  // else: a block id beyond the cache
  };
  for (const Spoil sp : {Spoil{1, false}, Spoil{2, true}}) {
    auto bt = c.block_tables;
    auto lens = c.lens;
    std::string want;
    if (sp.long_len) {
      lens[sp.seq] = c.max_blocks * c.block_size + 1;
      want = metadata_error_message(MetadataCheck::kSeqLenLong, sp.seq, 0, lens[sp.seq],
                                    c.max_blocks * c.block_size);
    } else {
      bt[sp.seq * c.max_blocks] = c.num_blocks + 7;
      want = metadata_error_message(MetadataCheck::kBlockOutOfRange, sp.seq, 0, c.num_blocks + 7,
                                    c.num_blocks);
    }
    DeviceBuffer dq(c.q), dk(c.k), dv(c.v), dbt(bt), dl(lens), dqs(c.q_starts);
    DeviceBuffer dout(out_n * sizeof(float)), dlse(lse_n * sizeof(float));
    auto view = view_of(c, dq.as<float>(), dk.as<void>(), dv.as<void>(), nullptr, nullptr,
                        dbt.as<int32_t>(), dl.as<int32_t>(), dqs.as<int32_t>(), dout.as<float>(),
                        dlse.as<float>());
    view.error = slot;
    ASSERT_EQ(paged_attention_cuda(view, nullptr), 0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    try {
      check_device_errors(0);
      ADD_FAILURE() << "no error recorded for " << want;
    } catch (const Error& e) {
      EXPECT_EQ(e.message(), want);
    }
    EXPECT_NO_THROW(check_device_errors(0)) << "raised once";
    // Decode: row s is sequence s.
    const auto out = dout.to_host<float>();
    const auto lse = dlse.to_host<float>();
    for (int s = 0; s < c.num_seqs; ++s) {
      for (int h = 0; h < c.hq; ++h) {
        const size_t r = static_cast<size_t>(s) * c.hq + h;
        if (s == sp.seq) {
          EXPECT_TRUE(std::isnan(lse[r])) << "bad row " << s;
          EXPECT_TRUE(std::isnan(out[r * c.dv])) << "bad row " << s;
        } else {
          EXPECT_NEAR(lse[r], lse_ref[r], 1e-4) << "good row " << s;
          EXPECT_NEAR(out[r * c.dv], out_ref[r * c.dv], 1e-4) << "good row " << s;
        }
      }
    }
  }
  // KV append: the slot beyond the cache is skipped and reported; the others are written.
  const int nb = 3, bs = 2, h = 1, d = 8;
  std::vector<int64_t> slots = {1, nb * bs, 2};
  std::mt19937 rng(3);
  auto key = randn(3 * h * d, rng), value = randn(3 * h * d, rng);
  std::vector<float> zeros(static_cast<size_t>(nb) * bs * h * d, 0.0f);
  DeviceBuffer dkey(key), dvalue(value), dslots(slots), dk(zeros), dv(zeros);
  PagedKvAppendView a;
  a.key = dkey.as<float>();
  a.value = dvalue.as<float>();
  a.slot_mapping = dslots.as<int64_t>();
  a.cache = PagedKv{dk.as<void>(), dv.as<void>(), nullptr, nullptr};
  a.cache.block_size = bs;
  a.cache.num_blocks = nb;
  a.cache.num_kv_heads = h;
  a.cache.head_dim_k = a.cache.head_dim_v = d;
  a.cache.k_block_stride = a.cache.v_block_stride = bs * h * d;
  a.key_stride[0] = a.value_stride[0] = h * d;
  a.key_stride[1] = a.value_stride[1] = d;
  a.num_tokens = 3;
  a.error = slot;
  ASSERT_EQ(paged_kv_append_cuda(a, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  try {
    check_device_errors(0);
    ADD_FAILURE() << "no error recorded for the slot beyond the cache";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(),
              metadata_error_message(MetadataCheck::kSlotOutOfRange, 1, 0, nb * bs, nb * bs));
  }
  const auto kh = dk.to_host<float>();
  for (int i = 0; i < d; ++i) {
    EXPECT_EQ(kh[1 * d + i], key[0 * d + i]) << "slot 1 written";
    EXPECT_EQ(kh[2 * d + i], key[2 * d + i]) << "slot 2 written";
  }
}

}  // namespace
}  // namespace tessera::kernels
