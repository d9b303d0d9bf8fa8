#include "runtime/training/tp_autograd.h"

#include <torch/csrc/autograd/custom_function.h>

namespace tessera::training {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

sharding::Communicator* comm_of(AutogradContext* ctx) {
  return reinterpret_cast<sharding::Communicator*>(ctx->saved_data["comm"].toInt());
}

void all_reduce_sum(torch::Tensor& t, sharding::Communicator* tp) {
  tp->all_reduce(t, sharding::ReduceOp::kSum);
}

struct CopyToTp : public torch::autograd::Function<CopyToTp> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = grads[0].contiguous().clone();
    all_reduce_sum(g, comm_of(ctx));
    return {g, torch::Tensor()};
  }
};

struct ReduceFromTp : public torch::autograd::Function<ReduceFromTp> {
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, int64_t comm) {
    auto y = x.contiguous().clone();
    all_reduce_sum(y, reinterpret_cast<sharding::Communicator*>(comm));
    return y;
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], torch::Tensor()};
  }
};

}  // namespace

torch::Tensor copy_to_tp(const torch::Tensor& x, sharding::Communicator* tp) {
  if (tp == nullptr || tp->size() == 1) return x;
  return CopyToTp::apply(x, reinterpret_cast<int64_t>(tp));
}

torch::Tensor reduce_from_tp(const torch::Tensor& x, sharding::Communicator* tp) {
  if (tp == nullptr || tp->size() == 1) return x;
  return ReduceFromTp::apply(x, reinterpret_cast<int64_t>(tp));
}

torch::Tensor column_parallel(const torch::Tensor& x, const torch::Tensor& weight_shard,
                              const torch::Tensor& bias_shard, sharding::Communicator* tp) {
  return torch::linear(copy_to_tp(x, tp), weight_shard, bias_shard);
}

torch::Tensor row_parallel(const torch::Tensor& x_shard, const torch::Tensor& weight_shard,
                           const torch::Tensor& bias, sharding::Communicator* tp) {
  auto y = reduce_from_tp(torch::linear(x_shard, weight_shard), tp);
  return bias.defined() ? y + bias : y;
}

}  // namespace tessera::training
