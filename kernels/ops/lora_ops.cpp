#include "kernels/ops/lora_ops.h"

#include "kernels/lora/lora_sgmv.h"
#include "kernels/ops/route.h"

namespace tessera::kernels {

namespace {

DType lora_dtype(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return DType::kF32;
    case torch::kHalf:
      return DType::kF16;
    case torch::kBFloat16:
      return DType::kBF16;
    case torch::kDouble:
      return DType::kF64;
    default:
      TESSERA_FAIL("lora: x must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  }
}

void check_int32_vector(const torch::Tensor& t, const char* name, int64_t size,
                        const torch::Device& device) {
  TESSERA_CHECK(t.defined() && t.dim() == 1 && t.size(0) == size && t.scalar_type() == torch::kInt,
                "lora: ", name, " must be int32 [", size, "], got ",
                t.defined() ? c10::toString(t.scalar_type()) : "undefined", " ",
                t.defined() ? t.sizes() : c10::IntArrayRef{});
  TESSERA_CHECK(t.device() == device, "lora: ", name, " must be on ", device, ", got ", t.device());
}

}  // namespace

void lora_sgmv_(torch::Tensor& y, const torch::Tensor& x, const LoraStack& ad,
                const torch::Tensor& seg_indptr, const torch::Tensor& seg_adapter, bool reference) {
  TESSERA_CHECK(x.dim() == 2, "lora: x must be 2-D [num_rows, in_features], got shape ", x.sizes());
  TESSERA_CHECK(y.dim() == 2, "lora: y must be 2-D [num_rows, out_features], got shape ",
                y.sizes());
  const DType dtype = lora_dtype(x);
  TESSERA_CHECK(y.scalar_type() == x.scalar_type(), "lora: y dtype ", y.scalar_type(),
                " differs from x dtype ", x.scalar_type());
  TESSERA_CHECK(y.size(0) == x.size(0), "lora: y has ", y.size(0), " rows but x has ", x.size(0));
  // y is written in place: its rows must be laid out as the kernels read them. x is copied when
  // not.
  TESSERA_CHECK(
      (y.stride(1) == 1 || y.size(1) <= 1) && (y.size(0) <= 1 || y.stride(0) >= y.size(1)),
      "lora: y must have a contiguous last dimension and non-overlapping rows, got strides ",
      y.strides());
  const auto xc =
      (x.stride(1) == 1 || x.size(1) <= 1) && (x.size(0) <= 1 || x.stride(0) >= x.size(1))
          ? x
          : x.contiguous();
  const auto device = x.device();
  TESSERA_CHECK(y.device() == device, "lora: y must be on x's device ", device, ", got ",
                y.device());
  TESSERA_CHECK(ad.a.defined() && ad.a.dim() == 3,
                "lora: a must be 3-D [num_adapters, r_max, in_features], got shape ",
                ad.a.defined() ? ad.a.sizes() : c10::IntArrayRef{});
  TESSERA_CHECK(ad.b.defined() && ad.b.dim() == 3,
                "lora: b must be 3-D [num_adapters, out_features, r_max], got shape ",
                ad.b.defined() ? ad.b.sizes() : c10::IntArrayRef{});
  const int64_t n = ad.a.size(0), rmax = ad.a.size(1);
  TESSERA_CHECK(ad.a.size(2) == x.size(1), "lora: a in_features=", ad.a.size(2),
                " differs from x in_features=", x.size(1));
  TESSERA_CHECK(ad.b.size(0) == n && ad.b.size(1) == y.size(1) && ad.b.size(2) == rmax,
                "lora: b must be [num_adapters=", n, ", out_features=", y.size(1), ", r_max=", rmax,
                "], got ", ad.b.sizes());
  for (const auto* t : {&ad.a, &ad.b}) {
    TESSERA_CHECK(t->scalar_type() == x.scalar_type(), "lora: ", t == &ad.a ? "a" : "b", " dtype ",
                  t->scalar_type(), " differs from x dtype ", x.scalar_type());
    TESSERA_CHECK(t->device() == device, "lora: ", t == &ad.a ? "a" : "b", " must be on ", device,
                  ", got ", t->device());
  }
  TESSERA_CHECK(seg_indptr.defined() && seg_indptr.dim() == 1 && seg_indptr.size(0) >= 1,
                "lora: seg_indptr must be int32 [num_segments + 1], got shape ",
                seg_indptr.defined() ? seg_indptr.sizes() : c10::IntArrayRef{});
  const int64_t num_segments = seg_indptr.size(0) - 1;
  check_int32_vector(seg_indptr, "seg_indptr", num_segments + 1, device);
  check_int32_vector(seg_adapter, "seg_adapter", num_segments, device);
  check_int32_vector(ad.ranks, "ranks", n, device);
  TESSERA_CHECK(ad.scales.defined() && ad.scales.dim() == 1 && ad.scales.size(0) == n &&
                    ad.scales.scalar_type() == torch::kFloat,
                "lora: scales must be float32 [", n, "], got ",
                ad.scales.defined() ? c10::toString(ad.scales.scalar_type()) : "undefined", " ",
                ad.scales.defined() ? ad.scales.sizes() : c10::IntArrayRef{});
  TESSERA_CHECK(ad.scales.device() == device, "lora: scales must be on ", device, ", got ",
                ad.scales.device());

  auto a = ad.a.contiguous(), b = ad.b.contiguous();
  auto indptr = seg_indptr.contiguous(), adapter = seg_adapter.contiguous();
  auto ranks = ad.ranks.contiguous(), scales = ad.scales.contiguous();
  LoraSgmvView v;
  v.x = xc.data_ptr();
  v.y = y.data_ptr();
  v.a = a.data_ptr();
  v.b = b.data_ptr();
  v.seg_indptr = indptr.data_ptr<int32_t>();
  v.seg_adapter = adapter.data_ptr<int32_t>();
  v.ranks = ranks.data_ptr<int32_t>();
  v.scales = scales.data_ptr<float>();
  v.x_row_stride = x.size(0) > 1 ? xc.stride(0) : x.size(1);
  v.y_row_stride = y.size(0) > 1 ? y.stride(0) : y.size(1);
  v.num_rows = x.size(0);
  v.in_features = x.size(1);
  v.out_features = y.size(1);
  v.num_segments = num_segments;
  v.num_adapters = n;
  v.r_max = rmax;
  v.dtype = dtype;
  route(
      "lora_sgmv", device, reference, [&] { lora_sgmv_ref(v); }, [&] { lora_sgmv_cpu(v); },
      TESSERA_CUDA_IMPL([&](void* stream) {
        TESSERA_CHECK(v.dtype != DType::kF64, "lora: float64 runs on the CPU only, x is on ",
                      device);
        TESSERA_CHECK(v.in_features > 0 && v.out_features > 0,
                      "lora: in_features and out_features must be positive, got ", v.in_features,
                      " and ", v.out_features);
        v.error = device_error_slot(detail::cuda_index_of(device));
        auto workspace = torch::empty({v.num_rows, std::max<int64_t>(rmax, 1)},
                                      x.options().dtype(torch::kFloat));
        return lora_sgmv_cuda(v, workspace.data_ptr<float>(), stream);
      }));
}

}  // namespace tessera::kernels
