#include "kernels/ops/cluster_attention_autograd.h"

#include <torch/autograd.h>

namespace tessera::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<torch::Tensor>;

OptTensor opt(const torch::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

class ClusterAttentionFunction : public torch::autograd::Function<ClusterAttentionFunction> {
 public:
  // Optional inputs travel as c10::optional so that absent ones are no autograd inputs at all.
  static variable_list forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k,
                               torch::Tensor v, OptTensor bias_o, OptTensor pe_w_o,
                               OptTensor pe_b_o, OptTensor blank_k_o, OptTensor blank_v_o,
                               OptTensor idx_o, OptTensor pos_o, OptTensor mask_o, double scale,
                               double dropout_p, int64_t seed, bool deterministic) {
    auto bias = bias_o.value_or(torch::Tensor()), pe_w = pe_w_o.value_or(torch::Tensor());
    auto pe_b = pe_b_o.value_or(torch::Tensor()), blank_k = blank_k_o.value_or(torch::Tensor());
    auto blank_v = blank_v_o.value_or(torch::Tensor()), idx = idx_o.value_or(torch::Tensor());
    auto pos = pos_o.value_or(torch::Tensor()), mask = mask_o.value_or(torch::Tensor());
    ClusterAttentionInputs in{.q = q,
                              .k = k,
                              .v = v,
                              .idx = idx,
                              .bias = bias,
                              .pos = pos,
                              .pe_w = pe_w,
                              .pe_b = pe_b,
                              .mask = mask,
                              .blank_k = blank_k,
                              .blank_v = blank_v,
                              .scale = scale,
                              .dropout_p = dropout_p,
                              .seed = seed};
    // fp32 output kept for the backward (it reads dout . out); the caller gets q's dtype. When a
    // gradient will be asked for, the fast CPU path also keeps the softmax weights, so that the
    // backward need not recompute the logits ((M + 1) floats per row).
    bool grad = false;
    for (const auto* t : {&q, &k, &v, &bias, &pe_w, &pe_b, &blank_k, &blank_v}) {
      grad = grad || (t->defined() && t->requires_grad());
    }
    torch::Tensor weights;
    auto [out32, lse] = cluster_attention_forward(in, ClusterImpl::kAuto, /*fp32_out=*/true,
                                                  grad ? &weights : nullptr);
    ctx->save_for_backward(
        {q, k, v, bias, pe_w, pe_b, blank_k, blank_v, idx, pos, mask, out32, lse, weights});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["deterministic"] = deterministic;
    ctx->mark_non_differentiable({lse});
    return {out32.to(q.scalar_type()), lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    ClusterAttentionInputs in{.q = s[0],
                              .k = s[1],
                              .v = s[2],
                              .idx = s[8],
                              .bias = s[3],
                              .pos = s[9],
                              .pe_w = s[4],
                              .pe_b = s[5],
                              .mask = s[10],
                              .blank_k = s[6],
                              .blank_v = s[7],
                              .scale = ctx->saved_data["scale"].toDouble(),
                              .dropout_p = ctx->saved_data["dropout_p"].toDouble(),
                              .seed = ctx->saved_data["seed"].toInt()};
    auto dout = grads[0].defined() ? grads[0] : torch::zeros_like(s[11]);
    auto g = cluster_attention_backward(in, s[11], s[12], dout,
                                        ctx->saved_data["deterministic"].toBool(),
                                        ClusterImpl::kAuto, s[13]);
    return {g.dq,
            g.dk,
            g.dv,
            g.dbias,
            g.dpe_w,
            g.dpe_b,
            g.dblank_k,
            g.dblank_v,
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

class ClusterQkFunction : public torch::autograd::Function<ClusterQkFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k,
                               torch::Tensor idx) {
    ctx->save_for_backward({q, k, idx});
    return cluster_qk_forward(q, k, idx);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto [dq, dk] = cluster_qk_backward(grads[0], s[0], s[1], s[2]);
    return {dq, dk, torch::Tensor()};
  }
};

class ClusterAvFunction : public torch::autograd::Function<ClusterAvFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor attn, torch::Tensor v,
                               torch::Tensor idx) {
    ctx->save_for_backward({attn, v, idx});
    return cluster_av_forward(attn, v, idx);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto [dattn, dv] = cluster_av_backward(grads[0], s[0], s[1], s[2]);
    return {dattn, dv, torch::Tensor()};
  }
};

class ClusterWfFunction : public torch::autograd::Function<ClusterWfFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor w, torch::Tensor f,
                               torch::Tensor idx) {
    ctx->save_for_backward({w, f, idx});
    return cluster_wf_forward(w, f, idx);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto [dw, df] = cluster_wf_backward(grads[0], s[0], s[1], s[2]);
    return {dw, df, torch::Tensor()};
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> cluster_attention(const ClusterAttentionInputs& in,
                                                           bool deterministic) {
  auto r = ClusterAttentionFunction::apply(
      in.q, in.k, in.v, opt(in.bias), opt(in.pe_w), opt(in.pe_b), opt(in.blank_k), opt(in.blank_v),
      opt(in.idx), opt(in.pos), opt(in.mask), in.scale, in.dropout_p, in.seed, deterministic);
  return {r[0], r[1]};
}

torch::Tensor cluster_qk(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& idx) {
  return ClusterQkFunction::apply(q, k, idx);
}

torch::Tensor cluster_av(const torch::Tensor& attn, const torch::Tensor& v,
                         const torch::Tensor& idx) {
  return ClusterAvFunction::apply(attn, v, idx);
}

torch::Tensor cluster_wf(const torch::Tensor& w, const torch::Tensor& f, const torch::Tensor& idx) {
  return ClusterWfFunction::apply(w, f, idx);
}

}  // namespace tessera::kernels
