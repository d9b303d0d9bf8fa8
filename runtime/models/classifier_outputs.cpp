#include "runtime/models/classifier_outputs.h"

#include "common/error.h"

namespace tessera::models {

const char* classifier_score_function(const EncoderConfig& c) {
  if (c.problem_type == ProblemType::kMultiLabel || c.num_labels == 1) return "sigmoid";
  return "softmax";
}

torch::Tensor classifier_scores(const torch::Tensor& logits, const EncoderConfig& c) {
  if (std::string(classifier_score_function(c)) == "sigmoid") return torch::sigmoid(logits);
  return torch::softmax(logits, -1);
}

ProblemType loss_problem_type(const EncoderConfig& c, bool integer_labels) {
  if (c.problem_type != ProblemType::kUnset) return c.problem_type;
  if (c.num_labels == 1) return ProblemType::kRegression;
  return integer_labels ? ProblemType::kSingleLabel : ProblemType::kMultiLabel;
}

double classifier_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                       const EncoderConfig& c) {
  const int64_t b = logits.size(0), n = c.num_labels;
  TESSERA_CHECK(b > 0, "a loss needs at least one labelled input");
  const bool integer = !labels.is_floating_point();
  const ProblemType p = loss_problem_type(c, integer);
  auto l = labels.to(logits.device());
  switch (p) {
    case ProblemType::kRegression: {
      const auto lf = l.to(torch::kFloat);
      if (n == 1) {
        TESSERA_CHECK(lf.numel() == b, "regression labels: one value per input expected (", b,
                      "), got shape ", labels.sizes());
        return torch::mse_loss(logits.reshape({b}), lf.reshape({b})).item<double>();
      }
      TESSERA_CHECK(lf.dim() == 2 && lf.size(0) == b && lf.size(1) == n, "regression labels: [", b,
                    ", ", n, "] expected, got shape ", labels.sizes());
      return torch::mse_loss(logits, lf).item<double>();
    }
    case ProblemType::kSingleLabel: {
      TESSERA_CHECK(integer && l.dim() == 1 && l.size(0) == b,
                    "single-label classification labels: one class id per input expected, got ",
                    labels.scalar_type(), " ", labels.sizes());
      const auto lo = l.to(torch::kLong);
      const int64_t mn = lo.min().item<int64_t>(), mx = lo.max().item<int64_t>();
      TESSERA_CHECK(mn >= 0 && mx < n, "class id ", mn < 0 ? mn : mx, " is outside [0, ", n, ")");
      return torch::cross_entropy_loss(logits, lo).item<double>();
    }
    case ProblemType::kMultiLabel: {
      TESSERA_CHECK(l.dim() == 2 && l.size(0) == b && l.size(1) == n,
                    "multi-label classification labels: [", b, ", ", n, "] expected, got shape ",
                    labels.sizes());
      return torch::binary_cross_entropy_with_logits(logits, l.to(torch::kFloat)).item<double>();
    }
    case ProblemType::kUnset:
      break;
  }
  TESSERA_FAIL("unreachable problem type");
}

}  // namespace tessera::models
