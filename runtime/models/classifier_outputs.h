// What a sequence-classification head's logits turn into, as transformers defines it: scores
// (softmax for single-label classification, sigmoid for multi-label or a single label — the
// text-classification pipeline's default rule) and, for given labels, the loss its
// *ForSequenceClassification.forward computes (MSE for regression, cross entropy for single-label,
// BCE with logits for multi-label; the problem type inferred from num_labels and the labels'
// kind when the config leaves it unset).
#pragma once

#include <torch/types.h>

#include "runtime/models/encoder_config.h"

namespace tessera::models {

// logits [B, num_labels] -> scores [B, num_labels].
torch::Tensor classifier_scores(const torch::Tensor& logits, const EncoderConfig& config);
// Which function scores() applies: "softmax" or "sigmoid".
const char* classifier_score_function(const EncoderConfig& config);

// The problem type a loss uses: the config's, or transformers' inference (one label:
// regression; integer labels: single-label; else multi-label).
ProblemType loss_problem_type(const EncoderConfig& config, bool integer_labels);

// Mean loss over the batch. labels: int64 [B] (single-label), float [B] or [B, num_labels]
// (regression), float [B, num_labels] (multi-label). Throws naming the shape or value that does
// not fit the problem type (a class id outside [0, num_labels), ...).
double classifier_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                       const EncoderConfig& config);

}  // namespace tessera::models
