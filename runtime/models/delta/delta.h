// Delta checkpoints: a fine-tuned checkpoint stored as its difference from the base it was tuned
// from, tensor by tensor, and rebuilt from that base. Lossless deltas hold zstd frames of the
// byte-wise XOR (or the wrapping integer difference) of each tensor's elements, split into byte
// planes; lossy ones hold int8 per output channel (one float32 scale per row) and record the
// largest error the rebuild has. The delta is itself a safetensors file (one U8 blob per tensor,
// the description in its metadata) carrying a fingerprint of its base: names, dtypes and shapes
// plus sampled bytes, checked before anything is written, and a full hash of each base tensor,
// checked as it streams. Both directions stream in chunks of a few MiB with the inputs' pages
// released as they go, so memory stays flat whatever the model size; outputs appear under their
// final name only when complete. Torch-free.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tessera::models::delta {

// How a lossless tensor's bytes are combined with the base's before compression.
enum class Transform { kXor, kDiff };
Transform parse_transform(const std::string& name);  // "xor" | "diff"; throws naming the value
const char* transform_name(Transform t);

struct CreateOptions {
  std::string base;   // .safetensors file or checkpoint folder
  std::string tuned;  // same
  std::string out;    // the delta file to write
  bool lossy_int8 = false;
  Transform transform = Transform::kXor;
  int zstd_level = 3;
};

struct CreateReport {
  uint64_t tuned_bytes = 0;  // tensor data of the tuned checkpoint
  uint64_t delta_bytes = 0;  // the delta file
  int64_t tensors = 0;
  int64_t lossless_tensors = 0;
  int64_t lossy_tensors = 0;
  int64_t new_tensors = 0;        // in tuned only: stored whole
  int64_t unchanged_tensors = 0;  // bitwise equal to the base's
  int64_t base_only_tensors = 0;  // in base only: not part of the rebuilt checkpoint
  double max_abs_error = 0;       // lossy: the largest |rebuilt - tuned| over all tensors
  double seconds = 0;
  std::string base_fingerprint;
  double ratio() const { return delta_bytes ? double(tuned_bytes) / double(delta_bytes) : 0.0; }
  nlohmann::json to_json() const;
};

// Throws tessera::Error (one line, naming the tensor or file) on unreadable inputs, a tensor whose
// dtype or shape differs between base and tuned, or an output it cannot write; the output file is
// then absent (a previous file of that name is left as it was).
CreateReport create_delta(const CreateOptions& options);

struct ApplyOptions {
  std::string base;
  std::string delta;
  // A folder (the tuned checkpoint's files, shards and index included), or a .safetensors file
  // when the tuned checkpoint was a single file. A folder must not exist yet.
  std::string out;
};

struct ApplyReport {
  uint64_t out_bytes = 0;    // tensor data written
  uint64_t delta_bytes = 0;  // the delta file
  int64_t tensors = 0;
  int64_t files = 0;
  bool lossy = false;
  double max_abs_error = 0;  // as recorded by create (0 for lossless)
  double seconds = 0;
  double ratio() const { return delta_bytes ? double(out_bytes) / double(delta_bytes) : 0.0; }
  nlohmann::json to_json() const;
};

// Throws tessera::Error (one line) when the delta is truncated or corrupt, was made against
// another base (fingerprint or a tensor's hash differs), or the base lacks a tensor or has it
// with another dtype or shape; nothing is left at `out` then.
ApplyReport apply_delta(const ApplyOptions& options);

}  // namespace tessera::models::delta
