// The CUDA sparse decode kernel against the CPU reference on the very same lists and pages: block
// sizes 1 / 3 / 16, a prime batch, odd head dims, GQA, every page format, empty lists, duplicate
// entries, a list of 9,000 entries, one split and several. Torch-free; skips without a device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/common/device_error.h"
#include "kernels/sparse_decode/sparse_attention.h"
#include "tests/kernels/sparse_decode/sparse_test_pool.h"

namespace tessera::kernels {
namespace {

using testing::Pool;
using testing::PoolSpec;

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// A device copy of a host vector (unwritten bytes are 0xff: NaN floats), freed on scope exit.
class DeviceBuffer {
 public:
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

struct Shape {
  std::vector<int> lens;
  int block_size, hq, hkv, dk, dv, entries;
};

TEST(SparseDecodeCuda, MatchesReferenceOnTheSameViews) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Shape> shapes = {
      {{37, 5, 61}, 16, 4, 2, 24, 24, 20},        {{19}, 1, 3, 1, 40, 24, 19},
      {{50, 7, 33, 12, 29}, 3, 6, 3, 17, 33, 64}, {{300, 2}, 16, 8, 8, 128, 128, 150},
      {{10000}, 16, 4, 1, 64, 64, 9000},
  };
  uint32_t seed = 5;
  for (const auto& sh : shapes) {
    for (KvDType dtype :
         {KvDType::kF32, KvDType::kF16, KvDType::kBF16, KvDType::kI8, KvDType::kF8E4M3}) {
      PoolSpec ps{sh.lens, sh.block_size, sh.hkv, sh.dk, sh.dv, dtype, seed++};
      Pool pool(ps);
      std::mt19937 rng(seed);
      const int n = static_cast<int>(sh.lens.size());
      const int max_entries = sh.entries + 1;
      std::vector<int32_t> idx(static_cast<size_t>(n) * sh.hkv * max_entries, 0), counts;
      for (int s = 0; s < n; ++s) {
        for (int h = 0; h < sh.hkv; ++h) {
          std::vector<int32_t> all(sh.lens[s]);
          std::iota(all.begin(), all.end(), 0);
          std::shuffle(all.begin(), all.end(), rng);
          all.resize(std::min<size_t>(all.size(), sh.entries));
          if (!all.empty()) all.push_back(all[0]);  // one duplicate
          if ((s + h) % 4 == 3) all.clear();        // some empty lists
          std::copy(all.begin(), all.end(), idx.begin() + (s * sh.hkv + h) * max_entries);
          counts.push_back(static_cast<int32_t>(all.size()));
        }
      }
      std::normal_distribution<float> normal;
      std::vector<float> q(static_cast<size_t>(n) * sh.hq * sh.dk);
      for (auto& x : q) x = normal(rng);
      SparseDecodeView a;
      a.kv = pool.view();
      a.block_tables = pool.tables.data();
      a.idx = idx.data();
      a.counts = counts.data();
      a.q = q.data();
      a.q_stride[0] = static_cast<int64_t>(sh.hq) * sh.dk;
      a.q_stride[1] = sh.dk;
      a.num_seqs = n;
      a.max_blocks_per_seq = pool.max_blocks;
      a.num_q_heads = sh.hq;
      a.max_entries = max_entries;
      a.scale = 1.0f / std::sqrt(static_cast<float>(sh.dk));
      std::vector<float> out(static_cast<size_t>(n) * sh.hq * sh.dv),
          lse(static_cast<size_t>(n) * sh.hq);
      a.out = out.data();
      a.lse = lse.data();
      sparse_decode_ref(a);

      DeviceBuffer dq(q), dk(pool.kbytes), dv(pool.vbytes), dks(pool.kscale), dvs(pool.vscale),
          dt(pool.tables), di(idx), dc(counts);
      for (int splits : {1, 3}) {
        DeviceBuffer dout(out.size() * sizeof(float)), dlse(lse.size() * sizeof(float));
        SparseDecodeView g = a;
        g.q = dq.as<float>();
        g.kv.k = dk.as<void>();
        g.kv.v = dv.as<void>();
        if (kv_is_quantised(dtype)) {
          g.kv.k_scale = dks.as<float>();
          g.kv.v_scale = dvs.as<float>();
        }
        g.block_tables = dt.as<int32_t>();
        g.idx = di.as<int32_t>();
        g.counts = dc.as<int32_t>();
        g.out = dout.as<float>();
        g.lse = dlse.as<float>();
        const int64_t ws_floats = sparse_decode_cuda_workspace(g, splits);
        DeviceBuffer ws(static_cast<size_t>(ws_floats) * sizeof(float));
        ASSERT_EQ(sparse_decode_cuda(g, splits, ws.as<float>(), nullptr), 0);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const auto got = dout.to_host<float>();
        const auto got_lse = dlse.to_host<float>();
        const std::string what = "bs=" + std::to_string(sh.block_size) +
                                 " dk=" + std::to_string(sh.dk) +
                                 " dtype=" + std::to_string(static_cast<int>(dtype)) +
                                 " splits=" + std::to_string(splits);
        for (size_t i = 0; i < out.size(); ++i) {
          ASSERT_LE(std::fabs(got[i] - out[i]), 1e-4 * (1.0 + std::fabs(out[i])))
              << what << " " << i;
        }
        for (size_t i = 0; i < lse.size(); ++i) {
          if (std::isinf(lse[i])) {
            ASSERT_EQ(got_lse[i], lse[i]) << what;
          } else {
            ASSERT_LE(std::fabs(got_lse[i] - lse[i]), 1e-4 * (1.0 + std::fabs(lse[i]))) << what;
          }
        }
      }
    }
  }
}

// Bad metadata (a length past the tables, a block id beyond the pool, a count past max_entries, an
// entry past its sequence) is recorded on the device without a synchronisation and raised by the
// host with the CPU dispatch's message; good sequences come out as the reference computes them
// and nothing outside the buffers is read (compute-sanitizer memcheck runs this in gpu_check.sh).
TEST(SparseDecodeCuda, BadMetadataIsRecordedOnTheDeviceAndRaisedLater) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const DeviceErrorSlot slot = device_error_slot(0);
  EXPECT_NO_THROW(check_device_errors(0));
  PoolSpec ps{{37, 20, 45}, 16, 2, 24, 24, KvDType::kF32, 9};
  Pool pool(ps);
  const int n = 3, hkv = 2, hq = 4, max_entries = 12;
  std::vector<int32_t> idx(static_cast<size_t>(n) * hkv * max_entries), counts(n * hkv, 10);
  for (int s = 0; s < n; ++s) {
    for (int h = 0; h < hkv; ++h) {
      for (int e = 0; e < max_entries; ++e) idx[(s * hkv + h) * max_entries + e] = (e * 3 + h) % 20;
    }
  }
  std::vector<int32_t> lens(ps.lens.begin(), ps.lens.end());
  std::vector<float> q(static_cast<size_t>(n) * hq * ps.dk, 0.5f);
  const int64_t capacity = static_cast<int64_t>(pool.max_blocks) * ps.block_size;
  struct Spoil {
    const char* what;
    int bad_seq;
  };
  for (const Spoil sp :
       {Spoil{"len", 1}, Spoil{"block", 2}, Spoil{"count", 0}, Spoil{"entry", 1}}) {
    auto bt = pool.tables;
    auto l = lens;
    auto ix = idx;
    auto cnt = counts;
    std::string want;
    const std::string what = sp.what;
    if (what == "len") {
      l[1] = static_cast<int32_t>(capacity + 5);
      want = metadata_error_message(MetadataCheck::kSeqLenLong, 1, 0, capacity + 5, capacity);
    } else if (what == "block") {
      bt[2 * pool.max_blocks + 1] = static_cast<int32_t>(pool.num_blocks + 3);
      want = metadata_error_message(MetadataCheck::kBlockOutOfRange, 2, 1, pool.num_blocks + 3,
                                    pool.num_blocks);
    } else if (what == "count") {
      cnt[0 * hkv + 1] = max_entries + 1;
      want = metadata_error_message(MetadataCheck::kCountOutOfRange, 0, 1, max_entries + 1,
                                    max_entries);
    } else {
      ix[(1 * hkv + 0) * max_entries + 4] = 20;  // sequence 1 holds 20 tokens
      want = metadata_error_message(MetadataCheck::kEntryOutOfRange, 1, 0, 20, 20, 4);
    }
    SparseDecodeView a;
    a.kv = pool.view();
    a.num_seqs = n;
    a.max_blocks_per_seq = pool.max_blocks;
    a.num_q_heads = hq;
    a.max_entries = max_entries;
    a.q_stride[0] = static_cast<int64_t>(hq) * ps.dk;
    a.q_stride[1] = ps.dk;
    a.scale = 0.2f;
    // The reference over the good metadata: the sequences not spoilt must match it.
    std::vector<float> out(static_cast<size_t>(n) * hq * ps.dv), lse(static_cast<size_t>(n) * hq);
    a.q = q.data();
    a.block_tables = pool.tables.data();
    a.idx = idx.data();
    a.counts = counts.data();
    a.out = out.data();
    a.lse = lse.data();
    sparse_decode_ref(a);
    DeviceBuffer dq(q), dk(pool.kbytes), dv(pool.vbytes), dt(bt), dl(l), di(ix), dc(cnt);
    DeviceBuffer dout(out.size() * sizeof(float)), dlse(lse.size() * sizeof(float));
    SparseDecodeView g = a;
    g.q = dq.as<float>();
    g.kv.k = dk.as<void>();
    g.kv.v = dv.as<void>();
    g.block_tables = dt.as<int32_t>();
    g.seq_lens = dl.as<int32_t>();
    g.idx = di.as<int32_t>();
    g.counts = dc.as<int32_t>();
    g.out = dout.as<float>();
    g.lse = dlse.as<float>();
    g.error = slot;
    ASSERT_EQ(sparse_decode_cuda(g, 1, nullptr, nullptr), 0) << what;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << what;
    try {
      check_device_errors(0);
      ADD_FAILURE() << "no error recorded for " << want;
    } catch (const Error& e) {
      EXPECT_EQ(e.message(), want) << what;
    }
    EXPECT_NO_THROW(check_device_errors(0)) << "raised once";
    const auto got = dout.to_host<float>();
    for (int s = 0; s < n; ++s) {
      if (s == sp.bad_seq) continue;
      for (int64_t i = s * hq * ps.dv; i < (s + 1) * hq * ps.dv; ++i) {
        ASSERT_LE(std::fabs(got[i] - out[i]), 1e-4 * (1.0 + std::fabs(out[i]))) << what << " " << i;
      }
    }
  }
}

}  // namespace
}  // namespace tessera::kernels
