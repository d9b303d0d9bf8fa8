#include "runtime/training/data_parallel.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <cmath>

#include "common/error.h"

namespace tessera::training {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct DataParallel::Bucket {
  std::vector<int> params;      // indices into params_, in bucket order
  std::vector<int64_t> offset;  // element offset of each
  int64_t size = 0;             // elements in use
  int64_t padded = 0;           // size rounded up to a multiple of dp (ZeRO) or size
  int64_t part = 0;             // padded / dp (ZeRO) or padded
  bool tp_sharded = false;
  torch::Tensor param_flat;  // [padded] the parameters (each parameter is a view)
  torch::Tensor grad_flat;   // [padded] their gradients (each .grad is a view)
  torch::Tensor grad_part;   // [part] ZeRO: this rank's reduced part
  torch::Tensor send_part;   // [part] ZeRO: all-gather input
  torch::Tensor decay_mask;  // [part] 1 where weight decay applies (undefined: none / all)
  bool decay_all = false;
  torch::Tensor m, v;  // [part] optimizer state (v: AdamW only)
  int pending = 0;     // parameters whose gradient is not ready yet
  bool launched = false;
  sharding::WorkPtr work;
  // This rank's slice of the flat buffers that the optimizer updates.
  torch::Tensor my_params() const { return param_flat.narrow(0, own_begin, part); }
  int64_t own_begin = 0;
};

DataParallel::DataParallel(std::vector<ParamInfo> params, const OptimizerOptions& options,
                           sharding::Communicator* dp, sharding::Communicator* tp)
    : params_(std::move(params)), opt_(options), dp_(dp), tp_(tp) {
  TESSERA_CHECK(!params_.empty(), "DataParallel needs at least one parameter");
  if (dp_ != nullptr) {
    dp_size_ = dp_->size();
    dp_rank_ = dp_->rank();
  }
  if (tp_ != nullptr && tp_->size() == 1) tp_ = nullptr;
  const int64_t cap =
      std::max<int64_t>(1, static_cast<int64_t>(opt_.bucket_mb * 1024 * 1024 / sizeof(float)));
  // Open buckets per kind (tp-sharded or replicated), filled in reverse registration order.
  bucket_of_.assign(params_.size(), -1);
  int open[2] = {-1, -1};
  for (int i = static_cast<int>(params_.size()) - 1; i >= 0; --i) {
    auto& p = params_[i];
    TESSERA_CHECK(p.param.scalar_type() == torch::kFloat && p.param.device().is_cpu(), "parameter ",
                  p.name, " must be a float32 CPU tensor, got ", p.param.scalar_type(), " on ",
                  p.param.device());
    TESSERA_CHECK(p.param.requires_grad(), "parameter ", p.name, " does not require grad");
    const int kind = p.tp_sharded ? 1 : 0;
    const int64_t n = p.param.numel();
    if (open[kind] < 0 ||
        (buckets_[open[kind]]->size > 0 && buckets_[open[kind]]->size + n > cap)) {
      buckets_.push_back(std::make_unique<Bucket>());
      buckets_.back()->tp_sharded = p.tp_sharded;
      open[kind] = static_cast<int>(buckets_.size()) - 1;
    }
    Bucket& b = *buckets_[open[kind]];
    b.params.push_back(i);
    b.offset.push_back(b.size);
    b.size += n;
    bucket_of_[i] = open[kind];
  }
  torch::NoGradGuard no_grad;
  for (auto& bp : buckets_) {
    Bucket& b = *bp;
    b.padded = opt_.zero ? (b.size + dp_size_ - 1) / dp_size_ * dp_size_ : b.size;
    b.part = opt_.zero ? b.padded / dp_size_ : b.padded;
    b.own_begin = opt_.zero ? b.part * dp_rank_ : 0;
    b.param_flat = torch::zeros({b.padded}, torch::kFloat);
    b.grad_flat = torch::zeros({b.padded}, torch::kFloat);
    auto decay = torch::zeros({b.padded}, torch::kFloat);
    bool any_decay = false, all_decay = true;
    for (size_t j = 0; j < b.params.size(); ++j) {
      auto& p = params_[b.params[j]];
      const int64_t n = p.param.numel();
      auto pv = b.param_flat.narrow(0, b.offset[j], n);
      pv.copy_(p.param.detach().reshape({-1}));
      p.param.set_data(pv.view(p.param.sizes()));
      p.param.mutable_grad() = b.grad_flat.narrow(0, b.offset[j], n).view(p.param.sizes());
      if (p.decay) {
        decay.narrow(0, b.offset[j], n).fill_(1.0f);
        any_decay = true;
      } else {
        all_decay = false;
      }
    }
    if (opt_.weight_decay > 0 && any_decay) {
      if (all_decay && b.padded == b.size) {
        b.decay_all = true;
      } else {
        b.decay_mask = decay.narrow(0, b.own_begin, b.part).clone();
      }
    }
    b.m = torch::zeros({b.part}, torch::kFloat);
    if (opt_.kind == OptimizerKind::kAdamW) b.v = torch::zeros({b.part}, torch::kFloat);
    if (opt_.zero) {
      b.grad_part = torch::zeros({b.part}, torch::kFloat);
      b.send_part = torch::zeros({b.part}, torch::kFloat);
    }
  }
  // Hooks after set_data (which may replace a parameter's gradient accumulator).
  for (size_t i = 0; i < params_.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[i].param);
    TESSERA_CHECK(acc != nullptr, "parameter ", params_[i].name, " has no gradient accumulator");
    const int index = static_cast<int>(i);
    acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, index](const torch::autograd::variable_list& outputs,
                      const torch::autograd::variable_list&) {
          on_grad_ready(index);
          return outputs;
        }));
    grad_accumulators_.push_back(std::move(acc));
  }
}

DataParallel::~DataParallel() {
  // Reductions in flight must finish before their buffers go.
  for (auto& b : buckets_) b->work.reset();
}

std::vector<std::string> DataParallel::bucket_names(int b) const {
  std::vector<std::string> out;
  for (int i : buckets_.at(b)->params) out.push_back(params_[i].name);
  return out;
}

void DataParallel::prepare_backward(bool sync) {
  sync_ = sync;
  in_backward_ = true;
  next_launch_ = 0;
  for (auto& b : buckets_) {
    b->pending = static_cast<int>(b->params.size());
    b->launched = false;
  }
}

void DataParallel::on_grad_ready(int i) {
  if (!in_backward_ || !sync_ || !overlap_) return;
  Bucket& b = *buckets_[bucket_of_[i]];
  --b.pending;
  launch_ready();
  poll();
}

void DataParallel::launch_ready() {
  // Strictly in bucket order: every rank must start the collectives in the same order.
  while (next_launch_ < num_buckets() && buckets_[next_launch_]->pending <= 0) {
    launch(next_launch_);
    ++times_.buckets_launched_in_backward;
    ++next_launch_;
  }
}

void DataParallel::launch(int bi) {
  Bucket& b = *buckets_[bi];
  b.launched = true;
  if (dp_size_ == 1) return;
  if (opt_.zero) {
    b.work = dp_->reduce_scatter_async(b.grad_flat, sharding::ReduceOp::kSum, b.grad_part);
  } else {
    b.work = dp_->all_reduce_async(b.grad_flat, sharding::ReduceOp::kSum);
  }
}

void DataParallel::poll() {
  // MPI progresses non-blocking collectives only inside MPI calls: test the ones in flight.
  for (int i = 0; i < next_launch_; ++i) {
    if (buckets_[i]->work && buckets_[i]->work->test()) {
      // finished; keep the Work until wait_all (cheap)
    }
  }
}

void DataParallel::wait_all() {
  for (auto& b : buckets_) {
    if (b->work) {
      b->work->wait();
      b->work.reset();
    }
  }
}

void DataParallel::finish_backward() {
  in_backward_ = false;
  if (!sync_) return;
  if (align_ && dp_size_ > 1) dp_->barrier();
  const double t0 = now_s();
  while (next_launch_ < num_buckets()) {
    launch(next_launch_++);
    ++times_.buckets_launched_after;
  }
  wait_all();
  times_.exposed_comm_s += now_s() - t0;
  torch::NoGradGuard no_grad;
  if (dp_size_ > 1) {
    const double inv = 1.0 / dp_size_;
    for (auto& b : buckets_) (opt_.zero ? b->grad_part : b->grad_flat).mul_(inv);
  } else if (opt_.zero) {
    for (auto& b : buckets_) b->grad_part.copy_(b->grad_flat);
  }
}

double DataParallel::grad_norm_sq() {
  // [tp-sharded sum of squares, replicated sum of squares] over this rank's part.
  double sq[2] = {0, 0};
  for (auto& b : buckets_) {
    const auto& g = opt_.zero ? b->grad_part : b->grad_flat;
    sq[b->tp_sharded ? 0 : 1] += g.to(torch::kDouble).square().sum().item<double>();
  }
  auto t = torch::tensor({sq[0], sq[1]}, torch::kDouble);
  if (opt_.zero && dp_size_ > 1) dp_->all_reduce(t, sharding::ReduceOp::kSum);
  if (tp_ != nullptr) {
    auto s = t.narrow(0, 0, 1).clone();
    tp_->all_reduce(s, sharding::ReduceOp::kSum);
    t[0] = s[0];
  }
  return t[0].item<double>() + t[1].item<double>();
}

double DataParallel::step(double lr) {
  const double t0 = now_s();
  torch::NoGradGuard no_grad;
  const double norm = std::sqrt(grad_norm_sq());
  double clip = 1.0;
  if (opt_.clip_grad > 0) {
    const double coef = opt_.clip_grad / (norm + 1e-6);
    if (coef < 1.0) clip = coef;
  }
  ++steps_;
  const double t = static_cast<double>(steps_);
  const double wd = opt_.weight_decay;
  for (auto& bp : buckets_) {
    Bucket& b = *bp;
    auto p = b.my_params();
    auto g = opt_.zero ? b.grad_part : b.grad_flat;
    if (clip != 1.0) g.mul_(clip);
    if (opt_.kind == OptimizerKind::kAdamW) {
      if (wd > 0) {
        if (b.decay_all) {
          p.mul_(1.0 - lr * wd);
        } else if (b.decay_mask.defined()) {
          p.sub_(p * b.decay_mask * (lr * wd));
        }
      }
      b.m.mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
      b.v.mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
      const double bc1 = 1.0 - std::pow(opt_.beta1, t);
      const double bc2 = 1.0 - std::pow(opt_.beta2, t);
      auto denom = (b.v.sqrt() / std::sqrt(bc2)).add_(opt_.eps);
      p.addcdiv_(b.m, denom, -lr / bc1);
    } else {
      if (wd > 0) {
        if (b.decay_all) {
          g.add_(p, wd);
        } else if (b.decay_mask.defined()) {
          g.add_(p * b.decay_mask, wd);
        }
      }
      if (steps_ == 1) {
        b.m.copy_(g);
      } else {
        b.m.mul_(opt_.momentum).add_(g);
      }
      p.add_(b.m, -lr);
    }
  }
  if (opt_.zero && dp_size_ > 1) {
    // Every rank's updated part back into everyone's parameters; all buckets in flight at once.
    for (auto& b : buckets_) {
      b->send_part.copy_(b->my_params());
      b->work = dp_->all_gather_async(b->send_part, b->param_flat.view({dp_size_, b->part}));
    }
    wait_all();
  }
  for (auto& b : buckets_) b->grad_flat.zero_();
  times_.step_s += now_s() - t0;
  return norm;
}

std::vector<std::pair<std::string, torch::Tensor>> DataParallel::optimizer_state() {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::vector<std::pair<std::string, torch::Tensor>> second;
  std::vector<torch::Tensor> full_m(buckets_.size()), full_v(buckets_.size());
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    Bucket& b = *buckets_[bi];
    auto gather = [&](const torch::Tensor& part) {
      if (!opt_.zero || dp_size_ == 1) return part;
      return dp_->all_gather(part).reshape({-1});
    };
    full_m[bi] = gather(b.m);
    if (b.v.defined()) full_v[bi] = gather(b.v);
  }
  const bool adam = opt_.kind == OptimizerKind::kAdamW;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int bi = bucket_of_[i];
    const Bucket& b = *buckets_[bi];
    int64_t off = 0;
    for (size_t j = 0; j < b.params.size(); ++j) {
      if (b.params[j] == static_cast<int>(i)) off = b.offset[j];
    }
    const auto shape = params_[i].param.sizes();
    const int64_t n = params_[i].param.numel();
    out.emplace_back((adam ? "exp_avg." : "momentum_buffer.") + params_[i].name,
                     full_m[bi].narrow(0, off, n).view(shape).clone());
    if (adam) {
      second.emplace_back("exp_avg_sq." + params_[i].name,
                          full_v[bi].narrow(0, off, n).view(shape).clone());
    }
  }
  for (auto& s : second) out.push_back(std::move(s));
  return out;
}

void DataParallel::load_optimizer_state(
    const std::vector<std::pair<std::string, torch::Tensor>>& state, int64_t steps) {
  torch::NoGradGuard no_grad;
  auto find = [&](const std::string& name) -> const torch::Tensor& {
    for (const auto& [k, t] : state) {
      if (k == name) return t;
    }
    TESSERA_FAIL("optimizer state has no entry '", name, "'");
  };
  const bool adam = opt_.kind == OptimizerKind::kAdamW;
  for (auto& bp : buckets_) {
    Bucket& b = *bp;
    auto full_m = torch::zeros({b.padded}, torch::kFloat);
    auto full_v = torch::zeros({b.padded}, torch::kFloat);
    for (size_t j = 0; j < b.params.size(); ++j) {
      const auto& p = params_[b.params[j]];
      const int64_t n = p.param.numel();
      auto fill = [&](torch::Tensor& full, const std::string& name) {
        const auto& t = find(name);
        TESSERA_CHECK(t.sizes() == p.param.sizes(), "optimizer state '", name, "' has shape ",
                      t.sizes(), ", the parameter ", p.param.sizes());
        full.narrow(0, b.offset[j], n).copy_(t.reshape({-1}));
      };
      fill(full_m, (adam ? "exp_avg." : "momentum_buffer.") + p.name);
      if (adam) fill(full_v, "exp_avg_sq." + p.name);
    }
    b.m.copy_(full_m.narrow(0, b.own_begin, b.part));
    if (adam) b.v.copy_(full_v.narrow(0, b.own_begin, b.part));
  }
  steps_ = steps;
}

}  // namespace tessera::training
