#include "runtime/training/digits_data.h"

#include <zlib.h>

#include <filesystem>
#include <sstream>

#include "common/error.h"

namespace tessera::training {

std::string read_gzip(const std::string& path) {
  TESSERA_CHECK(std::filesystem::exists(path), "data file ", path,
                " does not exist (the digits ship with scikit-learn: Debian's python3-sklearn, or "
                "pip's scikit-learn for a python3 on PATH)");
  gzFile f = gzopen(path.c_str(), "rb");
  TESSERA_CHECK(f != nullptr, "data file ", path, " cannot be opened");
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int errnum = 0;
      const std::string msg = gzerror(f, &errnum);
      gzclose(f);
      TESSERA_FAIL("data file ", path, " cannot be decompressed: ", msg);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  gzclose(f);
  return out;
}

DigitsData load_digits(const std::string& path) {
  const std::string text = read_gzip(path);
  DigitsData d;
  std::istringstream lines(text);
  std::string line;
  int64_t row = 0, line_no = 0;  // rows read; lines of the file (blank ones too, for messages)
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<double> values;
    std::istringstream fields(line);
    std::string field;
    while (std::getline(fields, field, ',')) {
      size_t used = 0;
      double v = 0;
      try {
        v = std::stod(field, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      // The whole field ("5x" was read as 5), spaces around it allowed.
      const bool rest_blank = field.find_first_not_of(" \t", used) == std::string::npos;
      TESSERA_CHECK(used > 0 && rest_blank, "data file ", path, " line ", line_no, ": '", field,
                    "' is not a number");
      values.push_back(v);
    }
    TESSERA_CHECK(values.size() == 65, "data file ", path, " line ", line_no, ": expected 65 ",
                  "values (64 pixels and the label), got ", values.size());
    const double label = values[64];
    TESSERA_CHECK(label >= 0 && label <= 9 && label == static_cast<int64_t>(label), "data file ",
                  path, " line ", line_no, ": label ", label, " is not a digit");
    DigitsSet& set = row % 5 == 0 ? d.test : d.train;
    for (int i = 0; i < 64; ++i) {
      TESSERA_CHECK(values[i] >= 0 && values[i] <= 16, "data file ", path, " line ", line_no,
                    ": pixel ", i, " = ", values[i], " is outside [0, 16]");
      set.pixels.push_back(static_cast<float>(values[i]));
    }
    set.labels.push_back(static_cast<int64_t>(label));
    ++row;
  }
  TESSERA_CHECK(row >= 10, "data file ", path, " has only ", row, " rows");
  return d;
}

int64_t SampleStream::at(int64_t pos) {
  const int64_t e = pos / n_;
  if (e != epoch_) {
    perm_.resize(n_);
    for (int64_t i = 0; i < n_; ++i) perm_[i] = i;
    uint64_t state = seed_ * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(e) + 1;
    auto next = [&state] {
      uint64_t z = (state += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      return z ^ (z >> 31);
    };
    for (int64_t i = n_ - 1; i > 0; --i) {
      const int64_t j = static_cast<int64_t>(next() % static_cast<uint64_t>(i + 1));
      std::swap(perm_[i], perm_[j]);
    }
    epoch_ = e;
  }
  return perm_[pos % n_];
}

}  // namespace tessera::training
