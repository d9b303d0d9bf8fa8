#include "kernels/ops/cluster_attention_ops.h"

#include <type_traits>

#include "common/error.h"
#include "kernels/cluster_attention/cluster_attention.h"
#include "kernels/cluster_attention/cluster_primitives.h"
#include "kernels/ops/route.h"

namespace tessera::kernels {

namespace {

bool is_float_type(torch::ScalarType t) {
  return t == torch::kFloat || t == torch::kHalf || t == torch::kBFloat16 || t == torch::kDouble;
}

void check_float(const torch::Tensor& t, const char* name) {
  TESSERA_CHECK(is_float_type(t.scalar_type()), name,
                " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
}

// The compute type: float64 inputs run the float64 reference, everything else float32.
torch::ScalarType compute_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

void check_double_on_cpu(const torch::Tensor& t, const char* what) {
  TESSERA_CHECK(t.scalar_type() != torch::kDouble || t.device().is_cpu(), what,
                ": float64 inputs run the CPU reference only, got a tensor on ", t.device());
}

void check_device(const torch::Tensor& t, const char* name, const torch::Device& device) {
  TESSERA_CHECK(t.device() == device, name, " must be on ", device, " like the other inputs, got ",
                t.device());
}

// The compute type (float32, or float64) with the last dimension contiguous (other strides kept).
torch::Tensor as_float_rows(const torch::Tensor& t, torch::ScalarType type = torch::kFloat) {
  auto f = t.scalar_type() == type ? t : t.to(type);
  if (f.dim() > 0 && f.size(-1) > 1 && f.stride(-1) != 1) f = f.contiguous();
  return f;
}

torch::Tensor as_float_contig(const torch::Tensor& t, torch::ScalarType type = torch::kFloat) {
  return t.to(type).contiguous();
}

// Checks idx [B, rows, M] (int32 / int64, values in [0, range)) and returns it as contiguous int64.
torch::Tensor checked_index(const torch::Tensor& idx, int64_t batch, int64_t rows, int64_t range,
                            const torch::Device& device) {
  TESSERA_CHECK(idx.scalar_type() == torch::kInt || idx.scalar_type() == torch::kLong,
                "idx must be int32 or int64, got ", idx.scalar_type());
  TESSERA_CHECK(idx.dim() == 3, "idx must be 3-D [batch, tokens, neighbours], got shape ",
                idx.sizes());
  TESSERA_CHECK(idx.size(0) == batch && idx.size(1) == rows, "idx shape ", idx.sizes(),
                " must start with [batch, tokens] = [", batch, ", ", rows, "]");
  TESSERA_CHECK(idx.size(2) > 0, "idx must have M > 0 neighbours, got M = ", idx.size(2));
  check_device(idx, "idx", device);
  auto out = idx.to(torch::kLong).contiguous();
  // A CPU index in range passes with one vectorised pass; anything else (CUDA, or a bad value
  // whose range the error names) takes at::aminmax.
  const bool cpu_ok = out.device().is_cpu() &&
                      cluster_index_in_range_cpu(out.data_ptr<int64_t>(), out.numel(), range);
  if (out.numel() > 0 && !cpu_ok) {
    const auto [lo_t, hi_t] = at::aminmax(out);  // one pass over the index
    const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>();
    TESSERA_CHECK(lo >= 0 && hi < range, "idx values must lie in [0, ", range, "), got range [", lo,
                  ", ", hi, "]");
  }
  return out;
}

// Everything the fused kernels need, checked and converted once for forward and backward.
template <typename T>
struct Prepared {
  torch::Tensor q, k, v, idx, bias, pos, pe_w, pe_b, mask, blank_k, blank_v;
  ClusterAttentionViewT<T> view;
};

template <typename T>
Prepared<T> prepare(const ClusterAttentionInputs& in) {
  constexpr auto kType = std::is_same_v<T, double> ? torch::kDouble : torch::kFloat;
  for (auto [t, name] : {std::pair{&in.q, "q"}, {&in.k, "k"}, {&in.v, "v"}}) {
    TESSERA_CHECK(t->defined(), name, " must be given");
    TESSERA_CHECK(t->dim() == 4, name, " must be 4-D [batch, heads, tokens, head_dim], got shape ",
                  t->sizes());
    check_float(*t, name);
  }
  TESSERA_CHECK(in.k.sizes() == in.q.sizes() && in.v.sizes() == in.q.sizes(),
                "q, k, v shapes must match, got ", in.q.sizes(), ", ", in.k.sizes(), ", ",
                in.v.sizes());
  TESSERA_CHECK(
      in.k.scalar_type() == in.q.scalar_type() && in.v.scalar_type() == in.q.scalar_type(),
      "q, k, v dtypes must match, got ", in.q.scalar_type(), ", ", in.k.scalar_type(), ", ",
      in.v.scalar_type());
  const auto device = in.q.device();
  check_device(in.k, "k", device);
  check_device(in.v, "v", device);
  TESSERA_CHECK(in.dropout_p >= 0.0 && in.dropout_p < 1.0, "dropout_p must be in [0, 1), got ",
                in.dropout_p);
  const int64_t B = in.q.size(0), H = in.q.size(1), N = in.q.size(2), D = in.q.size(3);
  TESSERA_CHECK(H > 0, "q must have at least one head, got H = ", H);
  TESSERA_CHECK(D > 0, "q must have head_dim > 0, got D = ", D);

  Prepared<T> p;
  p.q = as_float_rows(in.q, kType);
  p.k = as_float_rows(in.k, kType);
  p.v = as_float_rows(in.v, kType);
  int64_t M = N;
  if (in.idx.defined()) {
    p.idx = checked_index(in.idx, B, N, N, device);
    M = p.idx.size(2);
  } else {
    TESSERA_CHECK(N > 0 || B == 0, "global attention needs N > 0 tokens, got N = ", N);
  }
  if (in.bias.defined()) {
    check_float(in.bias, "bias");
    check_device(in.bias, "bias", device);
    TESSERA_CHECK(in.bias.sizes() == torch::IntArrayRef({B, H, N, M}), "bias shape ",
                  in.bias.sizes(), " must be [B, H, N, M] = [", B, ", ", H, ", ", N, ", ", M, "]");
    p.bias = as_float_contig(in.bias, kType);
  }
  if (in.pe_w.defined()) {
    TESSERA_CHECK(in.pos.defined(), "pe_w needs pos [B, N, 2]");
    check_float(in.pe_w, "pe_w");
    check_device(in.pe_w, "pe_w", device);
    TESSERA_CHECK(in.pe_w.sizes() == torch::IntArrayRef({H, 5}), "pe_w shape ", in.pe_w.sizes(),
                  " must be [H, 5] = [", H, ", 5]");
    p.pe_w = as_float_contig(in.pe_w, kType);
    if (in.pe_b.defined()) {
      check_float(in.pe_b, "pe_b");
      check_device(in.pe_b, "pe_b", device);
      TESSERA_CHECK(in.pe_b.sizes() == torch::IntArrayRef({H}), "pe_b shape ", in.pe_b.sizes(),
                    " must be [H] = [", H, "]");
      p.pe_b = as_float_contig(in.pe_b, kType);
    }
  } else {
    TESSERA_CHECK(!in.pe_b.defined(), "pe_b given without pe_w");
  }
  if (in.pos.defined()) {
    check_float(in.pos, "pos");
    check_device(in.pos, "pos", device);
    TESSERA_CHECK(in.pos.sizes() == torch::IntArrayRef({B, N, 2}), "pos shape ", in.pos.sizes(),
                  " must be [B, N, 2] = [", B, ", ", N, ", 2]");
    p.pos = as_float_contig(in.pos, kType);
  }
  if (in.mask.defined()) {
    TESSERA_CHECK(in.mask.scalar_type() == torch::kBool || in.mask.scalar_type() == torch::kByte,
                  "mask must be bool or uint8, got ", in.mask.scalar_type());
    check_device(in.mask, "mask", device);
    TESSERA_CHECK(in.mask.dim() == 4 && in.mask.size(0) == B &&
                      (in.mask.size(1) == 1 || in.mask.size(1) == H) && in.mask.size(2) == N &&
                      in.mask.size(3) == M,
                  "mask shape ", in.mask.sizes(), " must be [B, 1 or H, N, M] = [", B, ", 1|", H,
                  ", ", N, ", ", M, "]");
    p.mask = in.mask.to(torch::kByte).contiguous();
  }
  TESSERA_CHECK(in.blank_k.defined() == in.blank_v.defined(),
                "blank_k and blank_v must be given together");
  if (in.blank_k.defined()) {
    for (auto [t, name] : {std::pair{&in.blank_k, "blank_k"}, {&in.blank_v, "blank_v"}}) {
      check_float(*t, name);
      check_device(*t, name, device);
      TESSERA_CHECK(t->sizes() == torch::IntArrayRef({H, D}), name, " shape ", t->sizes(),
                    " must be [H, D] = [", H, ", ", D, "]");
    }
    p.blank_k = as_float_contig(in.blank_k, kType);
    p.blank_v = as_float_contig(in.blank_v, kType);
  }

  ClusterAttentionViewT<T>& a = p.view;
  a.q = p.q.template data_ptr<T>();
  a.k = p.k.template data_ptr<T>();
  a.v = p.v.template data_ptr<T>();
  for (int i = 0; i < 3; ++i) {
    a.q_stride[i] = p.q.stride(i);
    a.k_stride[i] = p.k.stride(i);
    a.v_stride[i] = p.v.stride(i);
  }
  a.idx = p.idx.defined() ? p.idx.template data_ptr<int64_t>() : nullptr;
  a.bias = p.bias.defined() ? p.bias.template data_ptr<T>() : nullptr;
  a.pos = p.pe_w.defined() ? p.pos.template data_ptr<T>() : nullptr;
  a.pe_w = p.pe_w.defined() ? p.pe_w.template data_ptr<T>() : nullptr;
  a.pe_b = p.pe_b.defined() ? p.pe_b.template data_ptr<T>() : nullptr;
  a.mask = p.mask.defined() ? p.mask.template data_ptr<uint8_t>() : nullptr;
  a.mask_heads = p.mask.defined() ? static_cast<int>(p.mask.size(1)) : 1;
  a.blank_k = p.blank_k.defined() ? p.blank_k.template data_ptr<T>() : nullptr;
  a.blank_v = p.blank_v.defined() ? p.blank_v.template data_ptr<T>() : nullptr;
  a.batch = static_cast<int>(B);
  a.heads = static_cast<int>(H);
  a.tokens = static_cast<int>(N);
  a.neighbours = static_cast<int>(M);
  a.head_dim = static_cast<int>(D);
  a.scale = static_cast<float>(in.scale);
  a.dropout_p = static_cast<float>(in.dropout_p);
  a.seed = static_cast<uint64_t>(in.seed);
  return p;
}

torch::Tensor cast_like(const torch::Tensor& t, const torch::Tensor& like) {
  return t.scalar_type() == like.scalar_type() ? t : t.to(like.scalar_type());
}

}  // namespace

namespace {

// float64: the reference on CPU, outputs in float64.
std::tuple<torch::Tensor, torch::Tensor> forward_double(const ClusterAttentionInputs& in) {
  check_double_on_cpu(in.q, "cluster_attention");
  Prepared<double> p = prepare<double>(in);
  auto out = torch::empty(in.q.sizes(), p.q.options());
  auto lse = torch::empty(in.q.sizes().slice(0, 3), p.q.options());
  p.view.out = out.data_ptr<double>();
  p.view.lse = lse.data_ptr<double>();
  cluster_attention_fwd_ref(p.view);
  return {out, lse};
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> cluster_attention_forward(const ClusterAttentionInputs& in,
                                                                   ClusterImpl impl, bool fp32_out,
                                                                   torch::Tensor* weights) {
  if (in.q.defined() && in.q.scalar_type() == torch::kDouble) return forward_double(in);
  Prepared<float> p = prepare<float>(in);
  const auto fopts = p.q.options().dtype(torch::kFloat);
  auto out = torch::empty(in.q.sizes(), fopts);
  auto lse = torch::empty(in.q.sizes().slice(0, 3), fopts);
  p.view.out = out.data_ptr<float>();
  p.view.lse = lse.data_ptr<float>();
  route(
      "cluster_attention", in.q.device(), impl == ClusterImpl::kReference,
      [&] { cluster_attention_fwd_ref(p.view); },
      [&] {
        if (weights != nullptr) {
          auto sizes = in.q.sizes().slice(0, 3).vec();
          sizes.push_back(p.view.neighbours + 1);
          *weights = torch::empty(sizes, fopts);
          p.view.weights = weights->data_ptr<float>();
        }
        cluster_attention_fwd_cpu(p.view);
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        TESSERA_CHECK(in.q.size(3) <= 256,
                      "cluster_attention on CUDA supports head_dim <= 256, got ", in.q.size(3));
        return cluster_attention_fwd_cuda(p.view, stream);
      }));
  return {fp32_out ? out : cast_like(out, in.q), lse};
}

namespace {

// Allocates the gradient outputs (compute type T) and points g at them.
template <typename T>
ClusterAttentionGradients alloc_grads(const Prepared<T>& p, const torch::Tensor& q,
                                      ClusterAttentionGradsT<T>& g) {
  const auto opts = p.q.options();
  ClusterAttentionGradients r;
  r.dq = torch::empty(q.sizes(), opts);
  r.dk = torch::empty(q.sizes(), opts);
  r.dv = torch::empty(q.sizes(), opts);
  g.dq = r.dq.data_ptr<T>();
  g.dk = r.dk.data_ptr<T>();
  g.dv = r.dv.data_ptr<T>();
  if (p.bias.defined()) {
    r.dbias = torch::empty(p.bias.sizes(), opts);
    g.dbias = r.dbias.data_ptr<T>();
  }
  if (p.pe_w.defined()) {
    r.dpe_w = torch::empty({q.size(1), 5}, opts);
    g.dpe_w = r.dpe_w.data_ptr<T>();
    if (p.pe_b.defined()) {
      r.dpe_b = torch::empty({q.size(1)}, opts);
      g.dpe_b = r.dpe_b.data_ptr<T>();
    }
  }
  if (p.blank_k.defined()) {
    r.dblank_k = torch::empty({q.size(1), q.size(3)}, opts);
    r.dblank_v = torch::empty({q.size(1), q.size(3)}, opts);
    g.dblank_k = r.dblank_k.data_ptr<T>();
    g.dblank_v = r.dblank_v.data_ptr<T>();
  }
  return r;
}

}  // namespace

ClusterAttentionGradients cluster_attention_backward(
    const ClusterAttentionInputs& in, const torch::Tensor& out, const torch::Tensor& lse,
    const torch::Tensor& dout, bool deterministic, ClusterImpl impl, const torch::Tensor& weights) {
  const auto& q = in.q;
  TESSERA_CHECK(q.defined(), "q must be given");
  for (auto [t, name] : {std::pair{&out, "out"}, {&dout, "dout"}}) {
    TESSERA_CHECK(t->defined() && t->sizes() == q.sizes(), name, " shape must be q's ", q.sizes(),
                  ", got ", t->defined() ? t->sizes() : torch::IntArrayRef{});
    check_device(*t, name, q.device());
  }
  TESSERA_CHECK(lse.defined() && lse.sizes() == q.sizes().slice(0, 3),
                "lse shape must be [B, H, N] = ", q.sizes().slice(0, 3), ", got ",
                lse.defined() ? lse.sizes() : torch::IntArrayRef{});
  check_device(lse, "lse", q.device());
  const auto type = compute_type(q);
  auto out_f = as_float_contig(out, type), lse_f = as_float_contig(lse, type);
  auto dout_f = as_float_contig(dout, type);

  ClusterAttentionGradients r;
  if (type == torch::kDouble) {
    check_double_on_cpu(q, "cluster_attention_backward");
    Prepared<double> p = prepare<double>(in);
    p.view.out = out_f.data_ptr<double>();
    p.view.lse = lse_f.data_ptr<double>();
    ClusterAttentionGradsT<double> g;
    g.dout = dout_f.data_ptr<double>();
    r = alloc_grads(p, q, g);
    cluster_attention_bwd_ref(p.view, g);
    return r;
  }
  Prepared<float> p = prepare<float>(in);
  p.view.out = out_f.data_ptr<float>();
  p.view.lse = lse_f.data_ptr<float>();
  ClusterAttentionGrads g;
  g.dout = dout_f.data_ptr<float>();
  r = alloc_grads(p, q, g);
  route(
      "cluster_attention_backward", q.device(), impl == ClusterImpl::kReference,
      [&] { cluster_attention_bwd_ref(p.view, g); },
      [&] {
        if (weights.defined()) {
          auto sizes = q.sizes().slice(0, 3).vec();
          sizes.push_back(p.view.neighbours + 1);
          TESSERA_CHECK(weights.sizes() == torch::IntArrayRef(sizes) &&
                            weights.scalar_type() == torch::kFloat && weights.is_contiguous() &&
                            weights.device() == q.device(),
                        "weights must be the forward's contiguous float32 ", sizes, ", got ",
                        weights.scalar_type(), " ", weights.sizes());
          p.view.weights = weights.data_ptr<float>();
        }
        cluster_attention_bwd_cpu(p.view, g, deterministic);
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        TESSERA_CHECK(q.size(3) <= 256, "cluster_attention on CUDA supports head_dim <= 256, got ",
                      q.size(3));
        const int64_t bytes = cluster_attention_bwd_workspace(p.view, deterministic);
        auto ws = torch::empty({std::max<int64_t>(bytes, 1)}, q.options().dtype(torch::kByte));
        return cluster_attention_bwd_cuda(p.view, g, deterministic, ws.data_ptr(), stream);
      }));
  r.dq = cast_like(r.dq, q);
  r.dk = cast_like(r.dk, in.k);
  r.dv = cast_like(r.dv, in.v);
  if (r.dbias.defined()) r.dbias = cast_like(r.dbias, in.bias);
  if (r.dpe_w.defined()) r.dpe_w = cast_like(r.dpe_w, in.pe_w);
  if (r.dpe_b.defined()) r.dpe_b = cast_like(r.dpe_b, in.pe_b);
  if (r.dblank_k.defined()) {
    r.dblank_k = cast_like(r.dblank_k, in.blank_k);
    r.dblank_v = cast_like(r.dblank_v, in.blank_v);
  }
  return r;
}

// ---- unfused primitives ----

namespace {

ClusterDims check_bhnd(const torch::Tensor& t, const char* name) {
  check_float(t, name);
  TESSERA_CHECK(t.dim() == 4, name, " must be 4-D [batch, heads, tokens, head_dim], got shape ",
                t.sizes());
  ClusterDims d;
  d.batch = static_cast<int>(t.size(0));
  d.heads = static_cast<int>(t.size(1));
  d.tokens = static_cast<int>(t.size(2));
  d.head_dim = static_cast<int>(t.size(3));
  return d;
}

void check_attn(const torch::Tensor& attn, const ClusterDims& d, const char* name) {
  check_float(attn, name);
  TESSERA_CHECK(attn.sizes() == torch::IntArrayRef({d.batch, d.heads, d.tokens, d.neighbours}),
                name, " shape ", attn.sizes(), " must be [B, H, N, M] = [", d.batch, ", ", d.heads,
                ", ", d.tokens, ", ", d.neighbours, "]");
}

torch::Tensor float_out(const torch::Tensor& like, torch::IntArrayRef sizes) {
  return torch::empty(sizes, like.options().dtype(torch::kFloat));
}

}  // namespace

torch::Tensor cluster_qk_forward(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& idx, ClusterImpl impl) {
  ClusterDims d = check_bhnd(q, "q");
  check_bhnd(k, "k");
  TESSERA_CHECK(k.sizes() == q.sizes(), "k shape ", k.sizes(), " must equal q shape ", q.sizes());
  check_device(k, "k", q.device());
  auto ix = checked_index(idx, d.batch, d.tokens, d.tokens, q.device());
  d.neighbours = static_cast<int>(ix.size(2));
  if (compute_type(q) == torch::kDouble) {
    check_double_on_cpu(q, "cluster_qk");
    auto qd = as_float_contig(q, torch::kDouble), kd = as_float_contig(k, torch::kDouble);
    auto attn = torch::empty({d.batch, d.heads, d.tokens, d.neighbours}, qd.options());
    cluster_qk_fwd_ref(d, qd.data_ptr<double>(), kd.data_ptr<double>(), ix.data_ptr<int64_t>(),
                       attn.data_ptr<double>());
    return attn;
  }
  auto qf = as_float_contig(q), kf = as_float_contig(k);
  auto attn = float_out(q, {d.batch, d.heads, d.tokens, d.neighbours});
  const int64_t* ip = ix.data_ptr<int64_t>();
  route(
      "cluster_qk", q.device(), impl == ClusterImpl::kReference,
      [&] {
        cluster_qk_fwd_ref(d, qf.data_ptr<float>(), kf.data_ptr<float>(), ip,
                           attn.data_ptr<float>());
      },
      [&] {
        cluster_qk_fwd_cpu(d, qf.data_ptr<float>(), kf.data_ptr<float>(), ip,
                           attn.data_ptr<float>());
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        return cluster_qk_fwd_cuda(d, qf.data_ptr<float>(), kf.data_ptr<float>(), ip,
                                   attn.data_ptr<float>(), stream);
      }));
  return cast_like(attn, q);
}

std::tuple<torch::Tensor, torch::Tensor> cluster_qk_backward(const torch::Tensor& dattn,
                                                             const torch::Tensor& q,
                                                             const torch::Tensor& k,
                                                             const torch::Tensor& idx,
                                                             ClusterImpl impl) {
  ClusterDims d = check_bhnd(q, "q");
  check_bhnd(k, "k");
  TESSERA_CHECK(k.sizes() == q.sizes(), "k shape ", k.sizes(), " must equal q shape ", q.sizes());
  auto ix = checked_index(idx, d.batch, d.tokens, d.tokens, q.device());
  d.neighbours = static_cast<int>(ix.size(2));
  check_attn(dattn, d, "dattn");
  for (const auto* t : {&k, &dattn}) check_device(*t, "k / dattn", q.device());
  if (compute_type(q) == torch::kDouble) {
    check_double_on_cpu(q, "cluster_qk_backward");
    auto qd = as_float_contig(q, torch::kDouble), kd = as_float_contig(k, torch::kDouble);
    auto gd = as_float_contig(dattn, torch::kDouble);
    auto dq = torch::empty(q.sizes(), qd.options()), dk = torch::empty(q.sizes(), qd.options());
    cluster_qk_bwd_ref(d, qd.data_ptr<double>(), kd.data_ptr<double>(), ix.data_ptr<int64_t>(),
                       gd.data_ptr<double>(), dq.data_ptr<double>(), dk.data_ptr<double>());
    return {dq, dk};
  }
  auto qf = as_float_contig(q), kf = as_float_contig(k), gf = as_float_contig(dattn);
  auto dq = float_out(q, q.sizes()), dk = float_out(q, q.sizes());
  const int64_t* ip = ix.data_ptr<int64_t>();
  route(
      "cluster_qk_backward", q.device(), impl == ClusterImpl::kReference,
      [&] {
        cluster_qk_bwd_ref(d, qf.data_ptr<float>(), kf.data_ptr<float>(), ip, gf.data_ptr<float>(),
                           dq.data_ptr<float>(), dk.data_ptr<float>());
      },
      [&] {
        cluster_qk_bwd_cpu(d, qf.data_ptr<float>(), kf.data_ptr<float>(), ip, gf.data_ptr<float>(),
                           dq.data_ptr<float>(), dk.data_ptr<float>());
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        return cluster_qk_bwd_cuda(d, qf.data_ptr<float>(), kf.data_ptr<float>(), ip,
                                   gf.data_ptr<float>(), dq.data_ptr<float>(), dk.data_ptr<float>(),
                                   stream);
      }));
  return {cast_like(dq, q), cast_like(dk, k)};
}

torch::Tensor cluster_av_forward(const torch::Tensor& attn, const torch::Tensor& v,
                                 const torch::Tensor& idx, ClusterImpl impl) {
  ClusterDims d = check_bhnd(v, "v");
  auto ix = checked_index(idx, d.batch, d.tokens, d.tokens, v.device());
  d.neighbours = static_cast<int>(ix.size(2));
  check_attn(attn, d, "attn");
  check_device(attn, "attn", v.device());
  if (compute_type(v) == torch::kDouble) {
    check_double_on_cpu(v, "cluster_av");
    auto ad = as_float_contig(attn, torch::kDouble), vd = as_float_contig(v, torch::kDouble);
    auto out = torch::empty(v.sizes(), vd.options());
    cluster_av_fwd_ref(d, ad.data_ptr<double>(), vd.data_ptr<double>(), ix.data_ptr<int64_t>(),
                       out.data_ptr<double>());
    return out;
  }
  auto af = as_float_contig(attn), vf = as_float_contig(v);
  auto out = float_out(v, v.sizes());
  const int64_t* ip = ix.data_ptr<int64_t>();
  route(
      "cluster_av", v.device(), impl == ClusterImpl::kReference,
      [&] {
        cluster_av_fwd_ref(d, af.data_ptr<float>(), vf.data_ptr<float>(), ip,
                           out.data_ptr<float>());
      },
      [&] {
        cluster_av_fwd_cpu(d, af.data_ptr<float>(), vf.data_ptr<float>(), ip,
                           out.data_ptr<float>());
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        return cluster_av_fwd_cuda(d, af.data_ptr<float>(), vf.data_ptr<float>(), ip,
                                   out.data_ptr<float>(), stream);
      }));
  return cast_like(out, v);
}

std::tuple<torch::Tensor, torch::Tensor> cluster_av_backward(const torch::Tensor& dout,
                                                             const torch::Tensor& attn,
                                                             const torch::Tensor& v,
                                                             const torch::Tensor& idx,
                                                             ClusterImpl impl) {
  ClusterDims d = check_bhnd(v, "v");
  auto ix = checked_index(idx, d.batch, d.tokens, d.tokens, v.device());
  d.neighbours = static_cast<int>(ix.size(2));
  check_attn(attn, d, "attn");
  check_float(dout, "dout");
  TESSERA_CHECK(dout.sizes() == v.sizes(), "dout shape ", dout.sizes(), " must equal v shape ",
                v.sizes());
  for (const auto* t : {&attn, &dout}) check_device(*t, "attn / dout", v.device());
  if (compute_type(v) == torch::kDouble) {
    check_double_on_cpu(v, "cluster_av_backward");
    auto ad = as_float_contig(attn, torch::kDouble), vd = as_float_contig(v, torch::kDouble);
    auto gd = as_float_contig(dout, torch::kDouble);
    auto dattn = torch::empty(attn.sizes(), vd.options()),
         dv = torch::empty(v.sizes(), vd.options());
    cluster_av_bwd_ref(d, ad.data_ptr<double>(), vd.data_ptr<double>(), ix.data_ptr<int64_t>(),
                       gd.data_ptr<double>(), dattn.data_ptr<double>(), dv.data_ptr<double>());
    return {dattn, dv};
  }
  auto af = as_float_contig(attn), vf = as_float_contig(v), gf = as_float_contig(dout);
  auto dattn = float_out(v, attn.sizes()), dv = float_out(v, v.sizes());
  const int64_t* ip = ix.data_ptr<int64_t>();
  route(
      "cluster_av_backward", v.device(), impl == ClusterImpl::kReference,
      [&] {
        cluster_av_bwd_ref(d, af.data_ptr<float>(), vf.data_ptr<float>(), ip, gf.data_ptr<float>(),
                           dattn.data_ptr<float>(), dv.data_ptr<float>());
      },
      [&] {
        cluster_av_bwd_cpu(d, af.data_ptr<float>(), vf.data_ptr<float>(), ip, gf.data_ptr<float>(),
                           dattn.data_ptr<float>(), dv.data_ptr<float>());
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        return cluster_av_bwd_cuda(d, af.data_ptr<float>(), vf.data_ptr<float>(), ip,
                                   gf.data_ptr<float>(), dattn.data_ptr<float>(),
                                   dv.data_ptr<float>(), stream);
      }));
  return {cast_like(dattn, attn), cast_like(dv, v)};
}

namespace {

ClusterWfDims check_wf(const torch::Tensor& w, const torch::Tensor& f) {
  check_float(w, "weights");
  check_float(f, "features");
  TESSERA_CHECK(w.dim() == 4, "weights must be 4-D [B, N', M, IC], got shape ", w.sizes());
  TESSERA_CHECK(f.dim() == 3, "features must be 3-D [B, N, C], got shape ", f.sizes());
  TESSERA_CHECK(f.size(0) == w.size(0), "features batch ", f.size(0), " must equal weights batch ",
                w.size(0));
  check_device(f, "features", w.device());
  ClusterWfDims d;
  d.batch = static_cast<int>(w.size(0));
  d.queries = static_cast<int>(w.size(1));
  d.neighbours = static_cast<int>(w.size(2));
  d.inner = static_cast<int>(w.size(3));
  d.tokens = static_cast<int>(f.size(1));
  d.channels = static_cast<int>(f.size(2));
  return d;
}

}  // namespace

torch::Tensor cluster_wf_forward(const torch::Tensor& w, const torch::Tensor& f,
                                 const torch::Tensor& idx, ClusterImpl impl) {
  ClusterWfDims d = check_wf(w, f);
  auto ix = checked_index(idx, d.batch, d.queries, d.tokens, w.device());
  TESSERA_CHECK(ix.size(2) == d.neighbours, "idx M = ", ix.size(2),
                " must equal weights M = ", d.neighbours);
  if (compute_type(f) == torch::kDouble) {
    check_double_on_cpu(f, "cluster_wf");
    auto wd = as_float_contig(w, torch::kDouble), fd = as_float_contig(f, torch::kDouble);
    auto out = torch::empty({d.batch, d.queries, d.inner, d.channels}, fd.options());
    cluster_wf_fwd_ref(d, wd.data_ptr<double>(), fd.data_ptr<double>(), ix.data_ptr<int64_t>(),
                       out.data_ptr<double>());
    return out;
  }
  auto wf = as_float_contig(w), ff = as_float_contig(f);
  auto out = float_out(w, {d.batch, d.queries, d.inner, d.channels});
  const int64_t* ip = ix.data_ptr<int64_t>();
  route(
      "cluster_wf", w.device(), impl == ClusterImpl::kReference,
      [&] {
        cluster_wf_fwd_ref(d, wf.data_ptr<float>(), ff.data_ptr<float>(), ip,
                           out.data_ptr<float>());
      },
      [&] {
        cluster_wf_fwd_cpu(d, wf.data_ptr<float>(), ff.data_ptr<float>(), ip,
                           out.data_ptr<float>());
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        return cluster_wf_fwd_cuda(d, wf.data_ptr<float>(), ff.data_ptr<float>(), ip,
                                   out.data_ptr<float>(), stream);
      }));
  return cast_like(out, f);
}

std::tuple<torch::Tensor, torch::Tensor> cluster_wf_backward(const torch::Tensor& dout,
                                                             const torch::Tensor& w,
                                                             const torch::Tensor& f,
                                                             const torch::Tensor& idx,
                                                             ClusterImpl impl) {
  ClusterWfDims d = check_wf(w, f);
  auto ix = checked_index(idx, d.batch, d.queries, d.tokens, w.device());
  TESSERA_CHECK(ix.size(2) == d.neighbours, "idx M = ", ix.size(2),
                " must equal weights M = ", d.neighbours);
  check_float(dout, "dout");
  check_device(dout, "dout", w.device());
  TESSERA_CHECK(dout.sizes() == torch::IntArrayRef({d.batch, d.queries, d.inner, d.channels}),
                "dout shape ", dout.sizes(), " must be [B, N', IC, C] = [", d.batch, ", ",
                d.queries, ", ", d.inner, ", ", d.channels, "]");
  if (compute_type(f) == torch::kDouble) {
    check_double_on_cpu(f, "cluster_wf_backward");
    auto wd = as_float_contig(w, torch::kDouble), fd = as_float_contig(f, torch::kDouble);
    auto gd = as_float_contig(dout, torch::kDouble);
    auto dw = torch::empty(w.sizes(), fd.options()), df = torch::empty(f.sizes(), fd.options());
    cluster_wf_bwd_ref(d, wd.data_ptr<double>(), fd.data_ptr<double>(), ix.data_ptr<int64_t>(),
                       gd.data_ptr<double>(), dw.data_ptr<double>(), df.data_ptr<double>());
    return {dw, df};
  }
  auto wf = as_float_contig(w), ff = as_float_contig(f), gf = as_float_contig(dout);
  auto dw = float_out(w, w.sizes()), df = float_out(w, f.sizes());
  const int64_t* ip = ix.data_ptr<int64_t>();
  route(
      "cluster_wf_backward", w.device(), impl == ClusterImpl::kReference,
      [&] {
        cluster_wf_bwd_ref(d, wf.data_ptr<float>(), ff.data_ptr<float>(), ip, gf.data_ptr<float>(),
                           dw.data_ptr<float>(), df.data_ptr<float>());
      },
      [&] {
        cluster_wf_bwd_cpu(d, wf.data_ptr<float>(), ff.data_ptr<float>(), ip, gf.data_ptr<float>(),
                           dw.data_ptr<float>(), df.data_ptr<float>());
      },
      TESSERA_CUDA_IMPL([&](void* stream) {
        return cluster_wf_bwd_cuda(d, wf.data_ptr<float>(), ff.data_ptr<float>(), ip,
                                   gf.data_ptr<float>(), dw.data_ptr<float>(), df.data_ptr<float>(),
                                   stream);
      }));
  return {cast_like(dw, w), cast_like(df, f)};
}

}  // namespace tessera::kernels
