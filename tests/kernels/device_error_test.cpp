// Host side of the device metadata checks and of the one routing rule of kernels/ops/, on the CPU:
// a record written as the CUDA kernels write it (field meanings of kernels/common/device_error.h)
// raises the very message the CPU path raises for the same bad entry, once; route() picks the
// implementation by device and names the op in every error. The CUDA kernels that fill the
// records run only on a GPU (tests/kernels/paged_cuda_test.cpp).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include <bit>
#include <functional>
#include <limits>
#include <string>

#include "common/error.h"
#include "kernels/common/device_error.h"
#include "kernels/ops/lora_ops.h"
#include "kernels/ops/paged_attention_ops.h"
#include "kernels/ops/paged_kv_append_ops.h"
#include "kernels/ops/route.h"
#include "kernels/ops/sparse_decode_ops.h"

namespace tessera::kernels {
namespace {

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.message();
  }
  ADD_FAILURE() << "no error raised";
  return "";
}

DeviceErrorRecord record(MetadataCheck c, int64_t i, int64_t j, int64_t value, int64_t limit,
                         int32_t k = 0) {
  DeviceErrorRecord r;
  r.k = k;
  r.i = i;
  r.j = j;
  r.value = value;
  r.limit = limit;
  r.code = static_cast<int32_t>(c);
  return r;
}

// Two sequences (5 and 7 tokens, 2 and 1 new queries) over a cache of 8 blocks of 4 slots.
struct Paged {
  torch::Tensor k = torch::randn({8, 4, 2, 16}), v = torch::randn({8, 4, 2, 16});
  torch::Tensor q = torch::randn({3, 4, 16});
  torch::Tensor bt = torch::tensor({1, 2, 0, 3, 4, 0}, torch::kInt).view({2, 3});
  torch::Tensor lens = torch::tensor({5, 7}, torch::kInt);
  torch::Tensor qs = torch::tensor({0, 2, 3}, torch::kInt);
  void run() const {
    PagedAttentionOptions o;
    o.scale = 0.25;
    paged_attention(q, k, v, bt, lens, qs, o);
  }
};

TEST(DeviceError, RecordRaisesTheCpuPathsMessage) {
  Paged good;
  good.run();  // the valid metadata passes
  struct Case {
    std::function<void(Paged&)> spoil;
    DeviceErrorRecord as_device_writes;
  };
  const Case cases[] = {
      {[](Paged& p) { p.qs[0] = 1; }, record(MetadataCheck::kQStartsFirst, 0, 0, 1, 0)},
      {[](Paged& p) { p.qs[2] = 4; }, record(MetadataCheck::kQStartsLast, 2, 0, 4, 3)},
      {[](Paged& p) {
         p.qs = torch::tensor({0, 3, 2, 3}, torch::kInt);
         p.bt = torch::tensor({1, 2, 0, 3, 4, 0, 5, 0, 0}, torch::kInt).view({3, 3});
         p.lens = torch::tensor({5, 7, 2}, torch::kInt);
       },
       record(MetadataCheck::kQStartsDecreasing, 1, 0, 3, 2)},
      {[](Paged& p) { p.lens[1] = 0; }, record(MetadataCheck::kSeqLenShort, 1, 0, 0, 1)},
      {[](Paged& p) { p.lens[0] = 13; }, record(MetadataCheck::kSeqLenLong, 0, 0, 13, 12)},
      {[](Paged& p) { p.bt[1][1] = 99; }, record(MetadataCheck::kBlockOutOfRange, 1, 1, 99, 8)},
      {[](Paged& p) { p.bt[0][0] = -1; }, record(MetadataCheck::kBlockOutOfRange, 0, 0, -1, 8)},
  };
  for (const auto& c : cases) {
    Paged p;
    c.spoil(p);
    const std::string cpu = message_of([&] { p.run(); });
    DeviceErrorRecord r = c.as_device_writes;
    EXPECT_EQ(message_of([&] { raise_recorded_error(&r); }), cpu);
    EXPECT_EQ(r.code, 0) << "raising clears the record";
    EXPECT_NO_THROW(raise_recorded_error(&r));
  }
  // One message spelled out, so that both sides cannot drift together.
  Paged p;
  p.bt[1][1] = 99;
  EXPECT_EQ(message_of([&] { p.run(); }), "block_tables[1][1]=99 is out of range [0, 8)");
}

TEST(DeviceError, SlotBeyondTheCacheSameMessageBothWays) {
  auto k = torch::zeros({4, 2, 1, 8}), v = torch::zeros({4, 2, 1, 8});
  auto key = torch::randn({3, 1, 8}), value = torch::randn({3, 1, 8});
  auto slots = torch::tensor({0, -1, 8}, torch::kLong);  // capacity 4 * 2 = 8
  const std::string cpu =
      message_of([&] { paged_kv_append(key, value, slots, k, v, {}, {}, false); });
  EXPECT_EQ(cpu, "slot_mapping[2]=8 is beyond the cache's num_blocks * block_size = 8");
  DeviceErrorRecord r = record(MetadataCheck::kSlotOutOfRange, 2, 0, 8, 8);
  EXPECT_EQ(message_of([&] { raise_recorded_error(&r); }), cpu);
  EXPECT_TRUE(torch::equal(k, torch::zeros_like(k))) << "nothing written before the refusal";
}

// Sparse decode: two sequences (5 and 7 tokens) over 8 blocks of 4 slots, 2 kv heads, lists of
// at most 3 entries.
struct Sparse {
  torch::Tensor k = torch::randn({8, 4, 2, 16}), v = torch::randn({8, 4, 2, 16});
  torch::Tensor q = torch::randn({2, 4, 16});
  torch::Tensor bt = torch::tensor({1, 2, 0, 3, 4, 0}, torch::kInt).view({2, 3});
  torch::Tensor lens = torch::tensor({5, 7}, torch::kInt);
  torch::Tensor idx =
      torch::tensor({0, 4, 2, 1, 3, 0, 6, 5, 0, 2, 0, 0}, torch::kInt).view({2, 2, 3});
  torch::Tensor counts = torch::tensor({3, 2, 3, 1}, torch::kInt).view({2, 2});
  void run() const {
    SparseDecodeOptions o;
    o.scale = 0.25;
    sparse_paged_decode(q, k, v, bt, lens, idx, counts, o);
  }
};

TEST(DeviceError, SparseDecodeRecordRaisesTheCpuPathsMessage) {
  Sparse good;
  good.run();
  struct Case {
    std::function<void(Sparse&)> spoil;
    DeviceErrorRecord as_device_writes;
  };
  const Case cases[] = {
      {[](Sparse& p) { p.lens[0] = -1; }, record(MetadataCheck::kSeqLenNegative, 0, 0, -1, 0)},
      {[](Sparse& p) { p.lens[1] = 13; }, record(MetadataCheck::kSeqLenLong, 1, 0, 13, 12)},
      {[](Sparse& p) { p.bt[1][1] = 8; }, record(MetadataCheck::kBlockOutOfRange, 1, 1, 8, 8)},
      {[](Sparse& p) { p.counts[1][0] = 4; }, record(MetadataCheck::kCountOutOfRange, 1, 0, 4, 3)},
      {[](Sparse& p) { p.counts[0][1] = -2; },
       record(MetadataCheck::kCountOutOfRange, 0, 1, -2, 3)},
      {[](Sparse& p) { p.idx[0][0][1] = 5; },
       record(MetadataCheck::kEntryOutOfRange, 0, 0, 5, 5, 1)},
      {[](Sparse& p) { p.idx[1][1][0] = -1; },
       record(MetadataCheck::kEntryOutOfRange, 1, 1, -1, 7, 0)},
  };
  for (const auto& c : cases) {
    Sparse p;
    c.spoil(p);
    const std::string cpu = message_of([&] { p.run(); });
    DeviceErrorRecord r = c.as_device_writes;
    EXPECT_EQ(message_of([&] { raise_recorded_error(&r); }), cpu);
  }
  Sparse p;
  p.idx[0][0][1] = 5;
  EXPECT_EQ(message_of([&] { p.run(); }), "idx[0][0][1]=5 is outside [0, seq_lens[0]=5)");
}

TEST(DeviceError, LoraRecordRaisesTheCpuPathsMessage) {
  const int64_t rows = 6, in = 8, out = 4, rmax = 2;
  struct Lora {
    torch::Tensor indptr = torch::tensor({0, 2, 6}, torch::kInt);
    torch::Tensor adapter = torch::tensor({0, 1}, torch::kInt);
    LoraStack stack{torch::randn({2, 2, 8}), torch::randn({2, 4, 2}),
                    torch::tensor({2, 1}, torch::kInt), torch::tensor({1.0f, 2.0f})};
  };
  auto run = [&](const Lora& l) {
    auto y = torch::zeros({rows, out});
    lora_sgmv_(y, torch::randn({rows, in}), l.stack, l.indptr, l.adapter);
  };
  run(Lora{});
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    std::function<void(Lora&)> spoil;
    DeviceErrorRecord as_device_writes;
  };
  const Case cases[] = {
      {[](Lora& l) { l.indptr[0] = 1; }, record(MetadataCheck::kSegIndptrFirst, 0, 0, 1, 0)},
      {[](Lora& l) { l.indptr[2] = 5; }, record(MetadataCheck::kSegIndptrLast, 2, 0, 5, rows)},
      {[](Lora& l) { l.indptr[1] = 7; }, record(MetadataCheck::kSegIndptrDecreasing, 1, 0, 7, 6)},
      {[](Lora& l) { l.adapter[0] = -3; },
       record(MetadataCheck::kSegAdapterOutOfRange, 0, 0, -3, 2)},
      {[](Lora& l) { l.stack.ranks[1] = 3; },
       record(MetadataCheck::kRankOutOfRange, 1, 0, 3, rmax)},
      {[&](Lora& l) { l.stack.scales[0] = inf; },
       record(MetadataCheck::kScaleNotFinite, 0, 0, std::bit_cast<uint32_t>(inf), 0)},
  };
  for (const auto& c : cases) {
    Lora l;
    c.spoil(l);
    const std::string cpu = message_of([&] { run(l); });
    DeviceErrorRecord r = c.as_device_writes;
    EXPECT_EQ(message_of([&] { raise_recorded_error(&r); }), cpu);
  }
  Lora l;
  l.stack.scales[0] = inf;
  EXPECT_EQ(message_of([&] { run(l); }), "lora: scales[0]=inf is not finite");
}

TEST(DeviceError, ClearRecordRaisesNothing) {
  DeviceErrorRecord r;
  EXPECT_NO_THROW(raise_recorded_error(&r));
  EXPECT_NO_THROW(raise_recorded_error(nullptr));
  EXPECT_NE(metadata_error_message(MetadataCheck(42), 0, 0, 0, 0).find("unknown"),
            std::string::npos);
}

TEST(Route, PicksTheImplementationByDevice) {
  std::string ran;
  auto ref = [&] { ran = "ref"; };
  auto cpu = [&] { ran = "cpu"; };
  auto cuda = TESSERA_CUDA_IMPL([&](void*) {
    ran = "cuda";
    return 0;
  });
  route("op", torch::Device(torch::kCPU), false, ref, cpu, cuda);
  EXPECT_EQ(ran, "cpu");
  route("op", torch::Device(torch::kCPU), true, ref, cpu, cuda);
  EXPECT_EQ(ran, "ref");
  ran.clear();
  // The reference is CPU-only; a device without an implementation gets one error naming both.
  EXPECT_EQ(
      message_of([&] { route("my_op", torch::Device(torch::kCUDA, 0), true, ref, cpu, cuda); }),
      "my_op: the reference implementation runs on CPU tensors only, got cuda:0");
  EXPECT_EQ(message_of([&] { route("my_op", torch::Device(torch::kMeta), false, ref, cpu, cuda); }),
            "my_op: no implementation for device meta");
  EXPECT_TRUE(ran.empty());
#ifdef TESSERA_WITH_CUDA
#ifdef TESSERA_TORCH_CUDA
  // A CUDA libtorch (pip's) asks the driver for the current stream before the callable runs.
  if (!torch::cuda::is_available()) GTEST_SKIP() << "a CUDA libtorch and no usable device";
#endif
  // The kernel's cudaError_t becomes an error naming the op (no device is touched: the callable
  // is a stand-in and no error slot exists yet).
  auto failing = TESSERA_CUDA_IMPL([](void*) { return 2; });  // cudaErrorMemoryAllocation
  const std::string m =
      message_of([&] { route("my_op", torch::Device(torch::kCUDA, 0), false, ref, cpu, failing); });
  EXPECT_NE(m.find("my_op: CUDA kernel failed with cudaErrorMemoryAllocation"), std::string::npos)
      << m;
  route("op", torch::Device(torch::kCUDA, 0), false, ref, cpu, cuda);
  EXPECT_EQ(ran, "cuda");
#else
  EXPECT_EQ(
      message_of([&] { route("my_op", torch::Device(torch::kCUDA, 0), false, ref, cpu, cuda); }),
      "my_op: got CUDA tensors but Tessera was built without CUDA");
#endif
}

}  // namespace
}  // namespace tessera::kernels
