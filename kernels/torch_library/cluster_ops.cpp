// Cluster attention ops for torch.ops.tessera: the fused attention (differentiable, and its raw
// forward / backward), the QK / AV / WF primitives (differentiable) and neighbour building.
#include <torch/library.h>

#include "kernels/ops/cluster_attention_autograd.h"
#include "kernels/ops/cluster_attention_ops.h"
#include "kernels/ops/cluster_neighbors_ops.h"

namespace tessera::kernels {

namespace {

using OptTensor = c10::optional<torch::Tensor>;

torch::Tensor value(const OptTensor& t) { return t.has_value() ? *t : torch::Tensor(); }

ClusterAttentionInputs make_inputs(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const OptTensor& idx,
                                   const OptTensor& bias, const OptTensor& pos,
                                   const OptTensor& pe_w, const OptTensor& pe_b,
                                   const OptTensor& mask, const OptTensor& blank_k,
                                   const OptTensor& blank_v, double scale, double dropout_p,
                                   int64_t seed) {
  return {.q = q,
          .k = k,
          .v = v,
          .idx = value(idx),
          .bias = value(bias),
          .pos = value(pos),
          .pe_w = value(pe_w),
          .pe_b = value(pe_b),
          .mask = value(mask),
          .blank_k = value(blank_k),
          .blank_v = value(blank_v),
          .scale = scale,
          .dropout_p = dropout_p,
          .seed = seed};
}

std::tuple<torch::Tensor, torch::Tensor> attention_op(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const OptTensor& idx,
    const OptTensor& bias, const OptTensor& pos, const OptTensor& pe_w, const OptTensor& pe_b,
    const OptTensor& mask, const OptTensor& blank_k, const OptTensor& blank_v, double scale,
    double dropout_p, int64_t seed, bool deterministic) {
  return cluster_attention(make_inputs(q, k, v, idx, bias, pos, pe_w, pe_b, mask, blank_k, blank_v,
                                       scale, dropout_p, seed),
                           deterministic);
}

std::tuple<torch::Tensor, torch::Tensor> forward_op(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const OptTensor& idx,
    const OptTensor& bias, const OptTensor& pos, const OptTensor& pe_w, const OptTensor& pe_b,
    const OptTensor& mask, const OptTensor& blank_k, const OptTensor& blank_v, double scale,
    double dropout_p, int64_t seed, bool reference) {
  return cluster_attention_forward(make_inputs(q, k, v, idx, bias, pos, pe_w, pe_b, mask, blank_k,
                                               blank_v, scale, dropout_p, seed),
                                   reference ? ClusterImpl::kReference : ClusterImpl::kAuto);
}

std::vector<torch::Tensor> backward_op(
    const torch::Tensor& dout, const torch::Tensor& out, const torch::Tensor& lse,
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const OptTensor& idx,
    const OptTensor& bias, const OptTensor& pos, const OptTensor& pe_w, const OptTensor& pe_b,
    const OptTensor& mask, const OptTensor& blank_k, const OptTensor& blank_v, double scale,
    double dropout_p, int64_t seed, bool deterministic, bool reference) {
  auto g = cluster_attention_backward(make_inputs(q, k, v, idx, bias, pos, pe_w, pe_b, mask,
                                                  blank_k, blank_v, scale, dropout_p, seed),
                                      out, lse, dout, deterministic,
                                      reference ? ClusterImpl::kReference : ClusterImpl::kAuto);
  // Absent gradients come back as empty tensors (a Tensor[] cannot hold None).
  auto or_empty = [&](const torch::Tensor& t) {
    return t.defined() ? t : torch::empty({0}, q.options());
  };
  return {g.dq,
          g.dk,
          g.dv,
          or_empty(g.dbias),
          or_empty(g.dpe_w),
          or_empty(g.dpe_b),
          or_empty(g.dblank_k),
          or_empty(g.dblank_v)};
}

std::vector<torch::Tensor> neighbors_op(const torch::Tensor& pos, int64_t nearest,
                                        int64_t cluster_size) {
  auto r = build_cluster_neighbors(pos, nearest, cluster_size);
  return {r.idx, r.mask, r.members, r.member_mask, r.cluster_of, r.centroids, r.nearest};
}

constexpr const char* kOptionalArgs =
    "Tensor? idx=None, Tensor? bias=None, Tensor? pos=None, Tensor? pe_w=None, "
    "Tensor? pe_b=None, Tensor? mask=None, Tensor? blank_k=None, Tensor? blank_v=None, "
    "float scale=1.0, float dropout_p=0.0, int seed=0";

}  // namespace

TORCH_LIBRARY_FRAGMENT(tessera, m) {
  using std::string;
  // Differentiable: autograd records the op and calls the fused backward.
  m.def(("cluster_attention(Tensor q, Tensor k, Tensor v, " + string(kOptionalArgs) +
         ", bool deterministic=False) -> (Tensor out, Tensor lse)")
            .c_str(),
        attention_op);
  m.def(("cluster_attention_forward(Tensor q, Tensor k, Tensor v, " + string(kOptionalArgs) +
         ", bool reference=False) -> (Tensor out, Tensor lse)")
            .c_str(),
        forward_op);
  // Returns [dq, dk, dv, dbias, dpe_w, dpe_b, dblank_k, dblank_v]; absent ones are empty.
  m.def(("cluster_attention_backward(Tensor dout, Tensor out, Tensor lse, Tensor q, Tensor k, "
         "Tensor v, " +
         string(kOptionalArgs) + ", bool deterministic=False, bool reference=False) -> Tensor[]")
            .c_str(),
        backward_op);
  m.def("cluster_qk(Tensor q, Tensor k, Tensor idx) -> Tensor", cluster_qk);
  m.def("cluster_av(Tensor attn, Tensor v, Tensor idx) -> Tensor", cluster_av);
  m.def("cluster_wf(Tensor weights, Tensor features, Tensor idx) -> Tensor", cluster_wf);
  // Returns [idx, mask, members, member_mask, cluster_of, centroids, nearest].
  m.def("cluster_neighbors(Tensor pos, int nearest_clusters, int cluster_size=8) -> Tensor[]",
        neighbors_op);
  m.def("nearest_clusters(Tensor centroids, int k) -> Tensor", nearest_clusters);
}

}  // namespace tessera::kernels
