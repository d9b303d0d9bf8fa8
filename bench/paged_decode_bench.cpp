// `tessera bench paged`: fast CPU paged decode as a fraction of the streaming-read bandwidth of
// the same machine, both measured here with the same threads and a working set of the same size.
#include "bench/paged_decode_bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "bench/bench.h"
#include "bench/timing.h"
#include "kernels/paged/paged_attention.h"

namespace tessera::bench {

namespace {

using Clock = std::chrono::steady_clock;

// Not under ThreadSanitizer: the clones' resolver runs before TSan's runtime is set up, and TSan
// instruments it (a crash at start-up; see kernels/paged/paged_attention_cpu.cpp).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define TESSERA_BENCH_CLONES \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define TESSERA_BENCH_CLONES
#endif

typedef float Vec16 __attribute__((vector_size(64)));

// Sum of n floats (n a multiple of 64) with four independent 16-wide accumulators, so the loop is
// limited by memory, not by the latency of a single add chain.
TESSERA_BENCH_CLONES float sum_block(const float* p, int64_t n) {
  Vec16 acc[4] = {};
  for (int64_t i = 0; i < n; i += 64) {
    for (int u = 0; u < 4; ++u) {
      Vec16 v;
      std::memcpy(&v, p + i + 16 * u, sizeof(v));
      acc[u] += v;
    }
  }
  const Vec16 s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float total = 0.0f;
  for (int i = 0; i < 16; ++i) total += s[i];
  return total;
}

// Streaming read of the whole buffer with every thread: the bandwidth ceiling for decode, which
// reads each K/V byte once. Returns seconds.
double read_seconds(const std::vector<float>& buf) {
  constexpr int64_t kBlock = 1 << 14;  // floats per work unit
  const int64_t blocks = static_cast<int64_t>(buf.size()) / kBlock;
  const float* p = buf.data();
  volatile float sink = 0.0f;
  const auto t0 = Clock::now();
  float total = 0.0f;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t b = 0; b < blocks; ++b) total += sum_block(p + b * kBlock, kBlock);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  sink = total;
  (void)sink;
  return s;
}

// A filled paged cache and decode queries; run() is one decode step over the whole batch.
struct DecodeSetup {
  std::vector<uint8_t> k, v;
  std::vector<float> ks, vs, q, out, lse;
  std::vector<int32_t> ids, lens, starts;
  kernels::PagedAttentionView view;
  double bytes = 0.0;  // K/V (and scale) bytes one step reads
  void run() const { kernels::paged_attention_cpu(view); }
};

void setup_decode(DecodeSetup& st, kernels::KvDType dtype, int batch, int seq_len, int hq, int hkv,
                  int d, int block_size) {
  using namespace tessera::kernels;
  auto& [k, v, ks, vs, q, out, lse, ids, lens, starts, a, bytes] = st;
  const int blocks_per_seq = (seq_len + block_size - 1) / block_size;
  const int64_t num_blocks = static_cast<int64_t>(batch) * blocks_per_seq + 1;
  const int64_t block_elems = static_cast<int64_t>(block_size) * hkv * d;
  const int eb = kv_elem_bytes(dtype);
  k.assign(num_blocks * block_elems * eb, 0);
  v.assign(k.size(), 0);
  std::mt19937 rng(1);
  // Page contents: random bytes are valid values in every format but fp32, where they could be
  // NaN; fill fp32 with small floats instead.
  if (dtype == KvDType::kF32) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    auto* kf = reinterpret_cast<float*>(k.data());
    auto* vf = reinterpret_cast<float*>(v.data());
    for (size_t i = 0; i < k.size() / 4; ++i) {
      kf[i] = u(rng);
      vf[i] = u(rng);
    }
  } else {
    for (auto& x : k) x = static_cast<uint8_t>(rng() & 0x77);  // avoids fp8 NaN codes
    for (auto& x : v) x = static_cast<uint8_t>(rng() & 0x77);
  }
  if (kv_is_quantised(dtype)) {
    ks.assign(num_blocks * block_size * hkv, 0.01f);
    vs.assign(ks.size(), 0.01f);
  }
  ids.resize(num_blocks - 1);
  std::iota(ids.begin(), ids.end(), 1);
  std::shuffle(ids.begin(), ids.end(), rng);  // pages scattered as a block pool leaves them
  lens.assign(batch, seq_len);
  starts.resize(batch + 1);
  std::iota(starts.begin(), starts.end(), 0);
  std::normal_distribution<float> nd;
  q.resize(static_cast<size_t>(batch) * hq * d);
  out.resize(q.size());
  lse.resize(static_cast<size_t>(batch) * hq);
  for (auto& x : q) x = nd(rng);

  a.q = q.data();
  a.kv.k = k.data();
  a.kv.v = v.data();
  a.kv.k_scale = ks.empty() ? nullptr : ks.data();
  a.kv.v_scale = vs.empty() ? nullptr : vs.data();
  a.kv.k_block_stride = a.kv.v_block_stride = block_elems;
  a.kv.k_scale_block_stride = a.kv.v_scale_block_stride = block_size * hkv;
  a.kv.num_blocks = num_blocks;
  a.kv.block_size = block_size;
  a.kv.num_kv_heads = hkv;
  a.kv.head_dim_k = a.kv.head_dim_v = d;
  a.kv.dtype = dtype;
  a.block_tables = ids.data();  // sequence b owns ids[b * blocks_per_seq, ...)
  a.seq_lens = lens.data();
  a.q_starts = starts.data();
  a.out = out.data();
  a.lse = lse.data();
  a.q_stride[0] = static_cast<int64_t>(hq) * d;
  a.q_stride[1] = d;
  a.total_q = batch;
  a.num_seqs = batch;
  a.max_blocks_per_seq = blocks_per_seq;
  a.num_q_heads = hq;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));

  bytes = static_cast<double>(batch) * seq_len * hkv * 2.0 * (d * eb + (ks.empty() ? 0 : 4));
  st.run();  // warm-up: pages faulted in, thread pool up
}

}  // namespace

// Largest |fast - reference| over the outputs and lses of one decode step, on the same pages.
double error_vs_reference(const DecodeSetup& st) {
  std::vector<float> out(st.out.size()), lse(st.lse.size());
  kernels::PagedAttentionView ref = st.view;
  ref.out = out.data();
  ref.lse = lse.data();
  kernels::paged_attention_ref(ref);
  st.run();
  double e = 0;
  for (size_t i = 0; i < out.size(); ++i) e = std::max(e, double(std::fabs(out[i] - st.out[i])));
  for (size_t i = 0; i < lse.size(); ++i) e = std::max(e, double(std::fabs(lse[i] - st.lse[i])));
  return e;
}

nlohmann::json run_paged_decode_bench(bool quick) {
  const int batch = 16, seq_len = quick ? 1024 : 4096, hq = 16, hkv = 4, d = 128, bs = 16;
  const int reps = quick ? 15 : 21;
  DecodeSetup fp32, int8;
  setup_decode(fp32, kernels::KvDType::kF32, batch, seq_len, hq, hkv, d, bs);
  setup_decode(int8, kernels::KvDType::kI8, batch, seq_len, hq, hkv, d, bs);
  // The bandwidth baseline reads a buffer as large as the fp32 K+V, so both see the same caches.
  std::vector<float> buf(static_cast<size_t>(fp32.bytes / sizeof(float)), 1.0f);
  // Interleaved rounds (the order alternates): a busy machine slows all three alike. Medians,
  // with the spread of the per-round fractions.
  const auto t = interleaved_ms(
      {[&] { read_seconds(buf); }, [&] { fp32.run(); }, [&] { int8.run(); }}, {reps, reps, 0.0});
  const double read_ms = median_of(t[0]), fp32_ms = median_of(t[1]), int8_ms = median_of(t[2]);
  const double buf_bytes = static_cast<double>(buf.size()) * sizeof(float);
  const double mem_bw = buf_bytes / (read_ms * 1e-3);
  const double fp32_bw = fp32.bytes / (fp32_ms * 1e-3);
  const double int8_bw = int8.bytes / (int8_ms * 1e-3);
  // Per round: (decode bytes / decode time) / (read bytes / read time).
  std::vector<double> fp32_frac, int8_frac;
  for (size_t r = 0; r < t[0].size(); ++r) {
    fp32_frac.push_back(fp32.bytes / t[1][r] / (buf_bytes / t[0][r]));
    int8_frac.push_back(int8.bytes / t[2][r] / (buf_bytes / t[0][r]));
  }
  return {{"paged_decode_bw_fraction", fp32_bw / mem_bw},
          {"paged_decode_bw_fraction_per_round", to_json(spread_of(fp32_frac))},
          {"paged_decode_int8_bw_fraction", int8_bw / mem_bw},
          {"paged_decode_int8_bw_fraction_per_round", to_json(spread_of(int8_frac))},
          {"mem_read_gbps", mem_bw / 1e9},
          {"mem_read_ms", to_json(spread_of(t[0]))},
          {"paged_decode_gbps", fp32_bw / 1e9},
          {"paged_decode_ms", fp32_ms},
          {"paged_decode_ms_spread", to_json(spread_of(t[1]))},
          {"paged_decode_int8_gbps", int8_bw / 1e9},
          {"paged_decode_int8_ms", int8_ms},
          {"paged_decode_int8_ms_spread", to_json(spread_of(t[2]))},
          // The fast kernel against the fp64-accumulating reference on the same pages.
          {"max_abs_err_vs_reference", error_vs_reference(fp32)},
          {"int8_max_abs_err_vs_reference", error_vs_reference(int8)},
          {"kv_bytes", fp32.bytes},
          {"batch", batch},
          {"seq_len", seq_len},
          {"num_q_heads", hq},
          {"num_kv_heads", hkv},
          {"head_dim", d},
          {"block_size", bs},
          {"threads", omp_get_max_threads()}};
}

Benchmark paged_decode_benchmark() {
  return {"paged",
          "CPU paged decode (batch 16 x 4096 tokens, GQA) vs streaming-read memory bandwidth",
          [](const BenchOptions& o) {
            if (o.rank != 0) return 0;  // one process: ranks on one machine share its bandwidth
            const auto r = run_paged_decode_bench(o.quick);
            if (o.json) {
              std::printf("%s\n", r.dump().c_str());
              return 0;
            }
            std::printf(
                "paged decode: batch %d x %d tokens, %d q heads / %d kv heads, d=%d, "
                "block %d, %d threads\n",
                r["batch"].get<int>(), r["seq_len"].get<int>(), r["num_q_heads"].get<int>(),
                r["num_kv_heads"].get<int>(), r["head_dim"].get<int>(), r["block_size"].get<int>(),
                r["threads"].get<int>());
            std::printf("%-24s %10s %10s %12s\n", "", "ms", "GB/s", "of mem bw");
            std::printf("%-24s %10s %10.2f %12s\n", "streaming read", "-",
                        r["mem_read_gbps"].get<double>(), "1.00");
            std::printf("%-24s %10.2f %10.2f %12.2f\n", "decode, fp32 pages",
                        r["paged_decode_ms"].get<double>(), r["paged_decode_gbps"].get<double>(),
                        r["paged_decode_bw_fraction"].get<double>());
            std::printf("%-24s %10.2f %10.2f %12.2f\n", "decode, int8 pages",
                        r["paged_decode_int8_ms"].get<double>(),
                        r["paged_decode_int8_gbps"].get<double>(),
                        r["paged_decode_int8_bw_fraction"].get<double>());
            std::printf(
                "medians of %d interleaved rounds; fp32 fraction per round p10-p90 %.2f-%.2f; "
                "max |fast - reference|: fp32 %.2e, int8 %.2e\n",
                r["paged_decode_bw_fraction_per_round"]["samples"].get<int>(),
                r["paged_decode_bw_fraction_per_round"]["p10"].get<double>(),
                r["paged_decode_bw_fraction_per_round"]["p90"].get<double>(),
                r["max_abs_err_vs_reference"].get<double>(),
                r["int8_max_abs_err_vs_reference"].get<double>());
            return 0;
          }};
}

}  // namespace tessera::bench
