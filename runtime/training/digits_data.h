// The 8x8 handwritten digits that scikit-learn ships (sklearn/datasets/data/digits.csv.gz: 1797
// rows of 64 pixel values 0..16 and the label), read straight from the gzip file with zlib, split
// deterministically into train and test, and served in a seeded order that does not depend on the
// number of ranks. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::training {

struct DigitsSet {
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  std::vector<float> pixels;    // [size, 64], row-major 8x8 images, values 0..16
  std::vector<int64_t> labels;  // [size] in 0..9
};

struct DigitsData {
  DigitsSet train;  // every row whose index is not a multiple of 5 (1437 rows)
  DigitsSet test;   // rows 0, 5, 10, ... (360 rows)
};

// Throws naming the file and line when the file is missing, not gzip, or a row is malformed.
DigitsData load_digits(const std::string& path);

// Reads a whole gzip file (zlib); throws naming the path.
std::string read_gzip(const std::string& path);

// The training sample stream: epoch e is a permutation of [0, n) drawn from (seed, e) with
// splitmix64 + Fisher-Yates (the same on every platform); step s of a run with global batch G
// takes the stream's positions [s * G, (s + 1) * G). Rank-independent, so any split of a global
// batch over ranks sees the same samples, and the data position of a checkpoint is the step.
class SampleStream {
 public:
  SampleStream(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  // The sample at stream position `pos`.
  int64_t at(int64_t pos);
  int64_t epoch_of(int64_t pos) const { return pos / n_; }

 private:
  int64_t n_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace tessera::training
