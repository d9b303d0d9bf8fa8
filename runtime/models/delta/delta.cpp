#include "runtime/models/delta/delta.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <random>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/dtype.h"
#include "common/error.h"
#include "runtime/models/delta/checkpoint.h"

namespace tessera::models::delta {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "tessera-delta";
constexpr int kVersion = 1;
// Elements per streamed chunk (4 MiB of float32, 2 MiB of bfloat16): the planes of a chunk are
// contiguous, and create and apply cut tensors at the same places.
constexpr int64_t kChunkElements = int64_t{1} << 20;
constexpr size_t kSampleBytes = 4096;  // per window of the base fingerprint's sampled bytes

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

class Hasher {
 public:
  Hasher() : state_(XXH3_createState()) { XXH3_64bits_reset(state_); }
  ~Hasher() { XXH3_freeState(state_); }
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(const void* p, size_t n) { XXH3_64bits_update(state_, p, n); }
  std::string hex() const { return hex64(XXH3_64bits_digest(state_)); }

 private:
  XXH3_state_t* state_;
};

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---- element conversions for the lossy path (float32, float16, bfloat16) ----

bool lossy_dtype(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

float load_float(DType t, const uint8_t* p) {
  if (t == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == DType::kF16 ? half_to_float(h) : bf16_to_float(h);
}

void store_float(DType t, float v, uint8_t* p) {
  if (t == DType::kF32) {
    std::memcpy(p, &v, 4);
    return;
  }
  const uint16_t h = t == DType::kF16 ? float_to_half(v) : float_to_bf16(v);
  std::memcpy(p, &h, 2);
}

// The rebuilt element: create computes it to measure the error, apply to write it; one function
// keeps the two bit for bit the same.
inline void rebuild_int8(DType t, const uint8_t* base, int8_t q, float scale, uint8_t* out) {
  store_float(t, load_float(t, base) + static_cast<float>(q) * scale, out);
}

// ---- lossless transform: element-wise XOR or wrapping difference, in byte planes ----

// planes[p * n + i] = byte p of (tuned_i op base_i), for n elements of `size` bytes. base null:
// tuned alone (a tensor the base lacks).
template <typename U>
void encode_words(Transform tr, const uint8_t* tuned, const uint8_t* base, int64_t n,
                  uint8_t* planes) {
  for (int64_t i = 0; i < n; ++i) {
    U t, b = 0, d;
    std::memcpy(&t, tuned + i * sizeof(U), sizeof(U));
    if (base != nullptr) std::memcpy(&b, base + i * sizeof(U), sizeof(U));
    d = tr == Transform::kXor ? static_cast<U>(t ^ b) : static_cast<U>(t - b);
    for (size_t p = 0; p < sizeof(U); ++p) planes[p * n + i] = static_cast<uint8_t>(d >> (8 * p));
  }
}

template <typename U>
void decode_words(Transform tr, const uint8_t* planes, const uint8_t* base, int64_t n,
                  uint8_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    U d = 0, b = 0;
    for (size_t p = 0; p < sizeof(U); ++p) d |= static_cast<U>(planes[p * n + i]) << (8 * p);
    if (base != nullptr) std::memcpy(&b, base + i * sizeof(U), sizeof(U));
    const U t = tr == Transform::kXor ? static_cast<U>(d ^ b) : static_cast<U>(d + b);
    std::memcpy(out + i * sizeof(U), &t, sizeof(U));
  }
}

void encode_chunk(Transform tr, size_t size, const uint8_t* tuned, const uint8_t* base, int64_t n,
                  uint8_t* planes) {
  switch (size) {
    case 1:
      return encode_words<uint8_t>(tr, tuned, base, n, planes);
    case 2:
      return encode_words<uint16_t>(tr, tuned, base, n, planes);
    case 4:
      return encode_words<uint32_t>(tr, tuned, base, n, planes);
    default:
      return encode_words<uint64_t>(tr, tuned, base, n, planes);
  }
}

void decode_chunk(Transform tr, size_t size, const uint8_t* planes, const uint8_t* base, int64_t n,
                  uint8_t* out) {
  switch (size) {
    case 1:
      return decode_words<uint8_t>(tr, planes, base, n, out);
    case 2:
      return decode_words<uint16_t>(tr, planes, base, n, out);
    case 4:
      return decode_words<uint32_t>(tr, planes, base, n, out);
    default:
      return decode_words<uint64_t>(tr, planes, base, n, out);
  }
}

// ---- files: written under a temporary name, renamed when complete ----

std::string temp_sibling(const std::string& path) {
  std::random_device rd;
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
}

class OutFile {
 public:
  explicit OutFile(std::string path) : path_(std::move(path)), tmp_(temp_sibling(path_)) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    TESSERA_CHECK(fd_ >= 0, "cannot create '", tmp_, "': ", std::strerror(errno));
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;

  void pwrite_all(const void* data, size_t n, uint64_t offset) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
      if (w < 0 && errno == EINTR) continue;
      TESSERA_CHECK(w > 0, "write to '", tmp_, "' failed: ", std::strerror(errno));
      p += w;
      n -= static_cast<size_t>(w);
      offset += static_cast<uint64_t>(w);
    }
  }
  void append(const void* data, size_t n) {
    pwrite_all(data, n, size_);
    size_ += n;
  }
  void seek_end(uint64_t offset) { size_ = offset; }
  uint64_t size() const { return size_; }
  void truncate(uint64_t size) {
    TESSERA_CHECK(::ftruncate(fd_, static_cast<off_t>(size)) == 0, "cannot size '", tmp_,
                  "': ", std::strerror(errno));
  }
  // Flushes to disk and closes; the file is still under its temporary name.
  void finish() {
    TESSERA_CHECK(::fdatasync(fd_) == 0, "cannot flush '", tmp_, "': ", std::strerror(errno));
    TESSERA_CHECK(::close(fd_) == 0, "cannot close '", tmp_, "': ", std::strerror(errno));
    fd_ = -1;
  }
  // Renames into place (after finish()).
  void commit() {
    TESSERA_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename '", tmp_, "' to '",
                  path_, "': ", std::strerror(errno));
    committed_ = true;
  }
  // The file stays where it is: a folder rename publishes it.
  void keep() { committed_ = true; }
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t size_ = 0;
  bool committed_ = false;
};

// A folder filled under a temporary name and renamed into place.
class OutDir {
 public:
  explicit OutDir(std::string path) : path_(std::move(path)), tmp_(temp_sibling(path_)) {
    TESSERA_CHECK(::mkdir(tmp_.c_str(), 0755) == 0, "cannot create the folder '", tmp_,
                  "': ", std::strerror(errno));
  }
  ~OutDir() {
    if (!committed_) {
      std::error_code ec;
      fs::remove_all(tmp_, ec);
    }
  }
  OutDir(const OutDir&) = delete;
  OutDir& operator=(const OutDir&) = delete;
  std::string file(const std::string& name) const { return (fs::path(tmp_) / name).string(); }
  void commit() {
    TESSERA_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename '", tmp_, "' to '",
                  path_, "': ", std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string path_, tmp_;
  bool committed_ = false;
};

// ---- zstd streams ----

class Compressor {
 public:
  Compressor(OutFile& out, int level) : out_(out), cctx_(ZSTD_createCCtx()) {
    TESSERA_CHECK(cctx_ != nullptr, "zstd: cannot create a compression context");
    check(ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level), "compressionLevel");
    check(ZSTD_CCtx_setParameter(cctx_, ZSTD_c_checksumFlag, 1), "checksumFlag");
    buf_.resize(ZSTD_CStreamOutSize());
  }
  ~Compressor() { ZSTD_freeCCtx(cctx_); }
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  // One frame per tensor; `bytes`, when known, is recorded in the frame header.
  void begin(uint64_t bytes) {
    check(ZSTD_CCtx_reset(cctx_, ZSTD_reset_session_only), "reset");
    check(ZSTD_CCtx_setPledgedSrcSize(cctx_, bytes), "pledgedSrcSize");
    start_ = out_.size();
  }
  void feed(const void* data, size_t n) { run(data, n, ZSTD_e_continue); }
  uint64_t end() {  // returns the frame's bytes
    run(nullptr, 0, ZSTD_e_end);
    return out_.size() - start_;
  }

 private:
  void run(const void* data, size_t n, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{data, n, 0};
    for (;;) {
      ZSTD_outBuffer o{buf_.data(), buf_.size(), 0};
      const size_t left = ZSTD_compressStream2(cctx_, &o, &in, mode);
      check(left, "compressStream2");
      out_.append(buf_.data(), o.pos);
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) break;
    }
  }
  static void check(size_t rc, const char* what) {
    TESSERA_CHECK(!ZSTD_isError(rc), "zstd ", what, ": ", ZSTD_getErrorName(rc));
  }
  OutFile& out_;
  ZSTD_CCtx* cctx_;
  std::vector<uint8_t> buf_;
  uint64_t start_ = 0;
};

// Reads one zstd frame (a mapped byte range) exactly: read(n) gives the next n decompressed
// bytes; finish() checks that the frame ended there. Compressed pages already consumed are
// released.
class Decompressor {
 public:
  Decompressor(const MappedSpan& span, const uint8_t* data, size_t size, std::string what)
      : span_(span), data_(data), size_(size), what_(std::move(what)), dctx_(ZSTD_createDCtx()) {
    TESSERA_CHECK(dctx_ != nullptr, "zstd: cannot create a decompression context");
  }
  ~Decompressor() { ZSTD_freeDCtx(dctx_); }
  Decompressor(const Decompressor&) = delete;
  Decompressor& operator=(const Decompressor&) = delete;

  void read(uint8_t* out, size_t n) {
    ZSTD_outBuffer o{out, n, 0};
    while (o.pos < o.size) {
      TESSERA_CHECK(!ended_, what_, ": the stored frame ends early (truncated or corrupt delta)");
      ZSTD_inBuffer in{data_, size_, pos_};
      const size_t before = o.pos;
      const size_t rc = ZSTD_decompressStream(dctx_, &o, &in);
      TESSERA_CHECK(!ZSTD_isError(rc), what_, ": corrupt stored data (", ZSTD_getErrorName(rc),
                    ")");
      ended_ = rc == 0;
      TESSERA_CHECK(in.pos > pos_ || o.pos > before || ended_, what_,
                    ": the stored frame ends early (truncated or corrupt delta)");
      pos_ = in.pos;
      if (pos_ > released_ + (size_t{4} << 20)) {
        release_mapped(span_, data_ + released_, pos_ - released_);
        released_ = pos_;
      }
    }
  }
  void finish() {
    if (!ended_) {
      uint8_t extra = 0;
      ZSTD_outBuffer o{&extra, 1, 0};
      ZSTD_inBuffer in{data_, size_, pos_};
      const size_t rc = ZSTD_decompressStream(dctx_, &o, &in);
      TESSERA_CHECK(!ZSTD_isError(rc), what_, ": corrupt stored data (", ZSTD_getErrorName(rc),
                    ")");
      TESSERA_CHECK(o.pos == 0, what_, ": the stored frame holds more data than the tensor");
      TESSERA_CHECK(rc == 0, what_, ": the stored frame ends early (truncated or corrupt delta)");
      pos_ = in.pos;
    }
    TESSERA_CHECK(pos_ == size_, what_, ": ", size_ - pos_, " stray bytes after the stored frame");
    release_mapped(span_, data_, size_);
  }

 private:
  MappedSpan span_;
  const uint8_t* data_;
  size_t size_;
  std::string what_;
  ZSTD_DCtx* dctx_;
  size_t pos_ = 0;
  size_t released_ = 0;
  bool ended_ = false;
};

// ---- the base fingerprint ----

// Names, dtypes and shapes of the base tensors a delta reads, in name order, with up to three
// 4 KiB windows of each one's bytes (start, middle, end): cheap to check before any work.
std::string fingerprint(const Checkpoint& base, std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  Hasher h;
  for (const auto& n : names) {
    const TensorEntry& e = base.get(n);
    h.update(n.data(), n.size() + 1);  // with the terminating NUL
    const auto dt = safetensors_name(e.dtype);
    h.update(dt.data(), dt.size());
    for (int64_t d : e.shape) h.update(&d, sizeof(d));
    const size_t w = std::min(kSampleBytes, e.nbytes);
    for (size_t at : {size_t{0}, (e.nbytes - w) / 2, e.nbytes - w}) {
      h.update(e.data + at, w);
      release_mapped(base.span_of(n), e.data + at, w);
    }
  }
  return h.hex() + "-" + std::to_string(names.size());
}

// ---- records ----

struct Record {
  std::string name;
  size_t file = 0;
  std::string encoding;  // "xor" | "diff" | "raw" | "int8"
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  uint64_t stored = 0;
  std::string base_hash;  // of the base tensor's bytes ("" for raw)
  std::string out_hash;   // of the rebuilt tensor's bytes
  double max_abs_error = 0;
  int64_t rows = 0, row_len = 0;  // int8: channels and elements per channel

  nlohmann::json to_json() const {
    return {{"name", name},         {"file", file},
            {"encoding", encoding}, {"dtype", safetensors_name(dtype)},
            {"shape", shape},       {"bytes", bytes},
            {"stored", stored},     {"base_hash", base_hash},
            {"out_hash", out_hash}, {"max_abs_error", max_abs_error},
            {"rows", rows},         {"row_len", row_len}};
  }
  static Record from_json(const nlohmann::json& j) {
    Record r;
    r.name = j.at("name").get<std::string>();
    r.file = j.at("file").get<size_t>();
    r.encoding = j.at("encoding").get<std::string>();
    r.dtype = parse_dtype(j.at("dtype").get<std::string>());
    r.shape = j.at("shape").get<std::vector<int64_t>>();
    r.bytes = j.at("bytes").get<uint64_t>();
    r.stored = j.at("stored").get<uint64_t>();
    r.base_hash = j.at("base_hash").get<std::string>();
    r.out_hash = j.at("out_hash").get<std::string>();
    r.max_abs_error = j.at("max_abs_error").get<double>();
    r.rows = j.at("rows").get<int64_t>();
    r.row_len = j.at("row_len").get<int64_t>();
    return r;
  }
};

// The delta's safetensors header: one U8 blob per record, the description in __metadata__.
std::string delta_header(const nlohmann::json& meta, const std::vector<Record>& records,
                         bool placeholder) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  h["__metadata__"] = {{"format", kFormat}, {"tessera_delta", meta.dump()}};
  uint64_t offset = 0;
  for (const auto& r : records) {
    const uint64_t n = placeholder ? std::numeric_limits<uint64_t>::max() : r.stored;
    const uint64_t b = placeholder ? std::numeric_limits<uint64_t>::max() : offset;
    h[r.name] = {{"dtype", "U8"}, {"shape", {n}}, {"data_offsets", {b, placeholder ? b : b + n}}};
    offset += r.stored;
  }
  return h.dump();
}

nlohmann::json tuned_layout(const Checkpoint& tuned) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : tuned.files()) {
    files.push_back({{"name", f.name}, {"header", f.header}, {"size", f.size}});
  }
  return {{"sharded", tuned.sharded()},
          {"index_json", tuned.index_json() ? nlohmann::json(*tuned.index_json()) : nullptr},
          {"files", files}};
}

// ---- create: one tensor ----

struct Stats {
  bool unchanged = true;
};

void encode_lossless(const TensorEntry& t, const MappedSpan& ts, const TensorEntry* b,
                     const MappedSpan& bs, Transform tr, Compressor& z, Record& rec,
                     Hasher* base_hash, Stats& st) {
  const size_t size = dtype_size(t.dtype);
  const int64_t n = t.numel();
  std::vector<uint8_t> planes(static_cast<size_t>(std::min(n, kChunkElements)) * size);
  Hasher out_hash;
  for (int64_t e0 = 0; e0 < n; e0 += kChunkElements) {
    const int64_t cn = std::min(kChunkElements, n - e0);
    const size_t off = static_cast<size_t>(e0) * size, bytes = static_cast<size_t>(cn) * size;
    const uint8_t* tp = t.data + off;
    const uint8_t* bp = b != nullptr ? b->data + off : nullptr;
    out_hash.update(tp, bytes);
    if (bp != nullptr) {
      base_hash->update(bp, bytes);
      if (st.unchanged && std::memcmp(tp, bp, bytes) != 0) st.unchanged = false;
    }
    encode_chunk(tr, size, tp, bp, cn, planes.data());
    z.feed(planes.data(), bytes);
    release_mapped(ts, tp, bytes);
    if (bp != nullptr) release_mapped(bs, bp, bytes);
  }
  rec.out_hash = out_hash.hex();
}

// Rows (output channels) of tuned - base as int8 with one float32 scale each: [scale][row_len
// int8] per row. A row whose difference is not finite is stored whole instead: a NaN scale, then
// the row's tuned bytes.
void encode_int8(const TensorEntry& t, const MappedSpan& ts, const TensorEntry& b,
                 const MappedSpan& bs, Compressor& z, Record& rec, Hasher& base_hash, Stats& st) {
  const size_t size = dtype_size(t.dtype);
  const int64_t rows = t.shape[0], len = rows > 0 ? t.numel() / rows : 0;
  rec.rows = rows;
  rec.row_len = len;
  std::vector<float> d(static_cast<size_t>(len));
  std::vector<int8_t> q(static_cast<size_t>(len));
  std::vector<uint8_t> rebuilt(static_cast<size_t>(len) * size);
  Hasher out_hash;
  double max_err = 0;
  size_t pending = 0;  // mapped bytes not yet released
  const uint8_t* release_from_t = t.data;
  const uint8_t* release_from_b = b.data;
  for (int64_t r = 0; r < rows; ++r) {
    const size_t off = static_cast<size_t>(r * len) * size, bytes = static_cast<size_t>(len) * size;
    const uint8_t* tp = t.data + off;
    const uint8_t* bp = b.data + off;
    base_hash.update(bp, bytes);
    if (st.unchanged && std::memcmp(tp, bp, bytes) != 0) st.unchanged = false;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < len; ++i) {
      const float v = load_float(t.dtype, tp + i * size) - load_float(t.dtype, bp + i * size);
      finite = finite && std::isfinite(v);
      d[i] = v;
      amax = std::max(amax, std::fabs(v));
    }
    // int8 unless a difference, or a rebuilt element, is not finite (NaN or inf weights, or an
    // overflow): such a row is stored whole, after a NaN in place of its scale.
    const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
    double row_err = 0;
    for (int64_t i = 0; finite && i < len; ++i) {
      const float v = std::rint(d[i] / scale);
      q[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      uint8_t* o = rebuilt.data() + i * size;
      rebuild_int8(t.dtype, bp + i * size, q[i], scale, o);
      const double err = std::fabs(static_cast<double>(load_float(t.dtype, o)) -
                                   static_cast<double>(load_float(t.dtype, tp + i * size)));
      finite = std::isfinite(err);
      row_err = std::max(row_err, err);
    }
    if (finite) {
      z.feed(&scale, 4);
      z.feed(q.data(), q.size());
      out_hash.update(rebuilt.data(), bytes);
      max_err = std::max(max_err, row_err);
    } else {
      const float marker = std::numeric_limits<float>::quiet_NaN();
      z.feed(&marker, 4);
      z.feed(tp, bytes);
      out_hash.update(tp, bytes);
    }
    pending += bytes;
    if (pending >= (size_t{4} << 20) || r + 1 == rows) {
      release_mapped(ts, release_from_t, static_cast<size_t>(tp + bytes - release_from_t));
      release_mapped(bs, release_from_b, static_cast<size_t>(bp + bytes - release_from_b));
      release_from_t = tp + bytes;
      release_from_b = bp + bytes;
      pending = 0;
    }
  }
  rec.out_hash = out_hash.hex();
  rec.max_abs_error = max_err;
}

// ---- apply: one tensor ----

struct Target {
  OutFile* file;
  uint64_t offset;  // of the tensor's first byte in the file
};

void decode_lossless(const Record& rec, const TensorEntry* b, const MappedSpan& bs, Transform tr,
                     Decompressor& z, const Target& out, Hasher* base_hash, Hasher& out_hash) {
  const size_t size = dtype_size(rec.dtype);
  const int64_t n = static_cast<int64_t>(rec.bytes / size);
  const size_t cap = static_cast<size_t>(std::min(n, kChunkElements)) * size;
  std::vector<uint8_t> planes(cap), bytes_out(cap);
  for (int64_t e0 = 0; e0 < n; e0 += kChunkElements) {
    const int64_t cn = std::min(kChunkElements, n - e0);
    const size_t off = static_cast<size_t>(e0) * size, bytes = static_cast<size_t>(cn) * size;
    z.read(planes.data(), bytes);
    const uint8_t* bp = b != nullptr ? b->data + off : nullptr;
    if (bp != nullptr) base_hash->update(bp, bytes);
    decode_chunk(tr, size, planes.data(), bp, cn, bytes_out.data());
    out_hash.update(bytes_out.data(), bytes);
    out.file->pwrite_all(bytes_out.data(), bytes, out.offset + off);
    if (bp != nullptr) release_mapped(bs, bp, bytes);
  }
}

void decode_int8(const Record& rec, const TensorEntry& b, const MappedSpan& bs, Decompressor& z,
                 const Target& out, Hasher& base_hash, Hasher& out_hash) {
  const size_t size = dtype_size(rec.dtype);
  const size_t row_bytes = static_cast<size_t>(rec.row_len) * size;
  std::vector<int8_t> q(static_cast<size_t>(rec.row_len));
  // Rows gather into ~4 MiB before each write.
  const size_t batch_rows = std::max<size_t>(1, (size_t{4} << 20) / std::max<size_t>(row_bytes, 1));
  std::vector<uint8_t> buf(batch_rows * row_bytes);
  int64_t r0 = 0;
  size_t used = 0;
  for (int64_t r = 0; r < rec.rows; ++r) {
    const uint8_t* bp = b.data + static_cast<size_t>(r) * row_bytes;
    base_hash.update(bp, row_bytes);
    float scale;
    z.read(reinterpret_cast<uint8_t*>(&scale), 4);
    uint8_t* o = buf.data() + used;
    if (std::isnan(scale)) {
      z.read(o, row_bytes);
    } else {
      z.read(reinterpret_cast<uint8_t*>(q.data()), q.size());
      for (int64_t i = 0; i < rec.row_len; ++i)
        rebuild_int8(rec.dtype, bp + i * size, q[i], scale, o + i * size);
    }
    out_hash.update(o, row_bytes);
    used += row_bytes;
    if (used == buf.size() || r + 1 == rec.rows) {
      out.file->pwrite_all(buf.data(), used, out.offset + static_cast<size_t>(r0) * row_bytes);
      release_mapped(bs, b.data + static_cast<size_t>(r0) * row_bytes, used);
      r0 = r + 1;
      used = 0;
    }
  }
}

std::string describe_entry(const TensorEntry& e) {
  return std::string(dtype_name(e.dtype)) + " " + shape_string(e.shape);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

Transform parse_transform(const std::string& name) {
  if (name == "xor") return Transform::kXor;
  if (name == "diff") return Transform::kDiff;
  TESSERA_FAIL("--transform must be xor or diff, got '", name, "'");
}

const char* transform_name(Transform t) { return t == Transform::kXor ? "xor" : "diff"; }

nlohmann::json CreateReport::to_json() const {
  return {{"tuned_bytes", tuned_bytes},
          {"delta_bytes", delta_bytes},
          {"ratio", ratio()},
          {"tensors", tensors},
          {"lossless_tensors", lossless_tensors},
          {"lossy_tensors", lossy_tensors},
          {"new_tensors", new_tensors},
          {"unchanged_tensors", unchanged_tensors},
          {"base_only_tensors", base_only_tensors},
          {"max_abs_error", max_abs_error},
          {"seconds", seconds},
          {"base_fingerprint", base_fingerprint}};
}

nlohmann::json ApplyReport::to_json() const {
  return {{"out_bytes", out_bytes},
          {"delta_bytes", delta_bytes},
          {"ratio", ratio()},
          {"tensors", tensors},
          {"files", files},
          {"lossy", lossy},
          {"max_abs_error", max_abs_error},
          {"seconds", seconds}};
}

CreateReport create_delta(const CreateOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  TESSERA_CHECK(o.zstd_level >= 1 && o.zstd_level <= ZSTD_maxCLevel(),
                "--zstd-level must be in [1, ", ZSTD_maxCLevel(), "], got ", o.zstd_level);
  TESSERA_CHECK(!o.out.empty(), "--out must name the delta file to write");
  const Checkpoint base = Checkpoint::open(o.base, "--base");
  const Checkpoint tuned = Checkpoint::open(o.tuned, "--tuned");
  std::error_code ec;
  for (const auto* in : {&base, &tuned}) {
    for (const auto& f : in->files()) {
      TESSERA_CHECK(!fs::equivalent(f.path, o.out, ec), "--out '", o.out,
                    "' is one of the input files");
    }
  }

  // Plan every tensor before writing anything: mismatches fail here, with nothing on disk.
  CreateReport rep;
  std::vector<Record> records;
  std::vector<std::string> used;
  for (const auto& name : tuned.names_in_file_order()) {
    const TensorEntry& t = tuned.get(name);
    Record r;
    r.name = name;
    r.file = tuned.file_of(name);
    r.dtype = t.dtype;
    r.shape = t.shape;
    r.bytes = t.nbytes;
    if (!base.contains(name)) {
      r.encoding = "raw";
      ++rep.new_tensors;
    } else {
      const TensorEntry& b = base.get(name);
      TESSERA_CHECK(b.dtype == t.dtype && b.shape == t.shape, "tensor '", name, "' is ",
                    describe_entry(t), " in --tuned but ", describe_entry(b),
                    " in --base: shape or dtype mismatch, not a fine-tune of this base");
      used.push_back(name);
      const bool int8 =
          o.lossy_int8 && lossy_dtype(t.dtype) && t.shape.size() >= 2 && t.numel() > 0;
      r.encoding = int8 ? "int8" : transform_name(o.transform);
      ++(int8 ? rep.lossy_tensors : rep.lossless_tensors);
    }
    records.push_back(std::move(r));
    rep.tuned_bytes += t.nbytes;
  }
  for (const auto& f : base.files()) {
    for (const auto& n : f.st->names()) rep.base_only_tensors += tuned.contains(n) ? 0 : 1;
  }
  rep.tensors = static_cast<int64_t>(records.size());
  rep.base_fingerprint = fingerprint(base, used);

  nlohmann::json meta{{"format", kFormat},
                      {"version", kVersion},
                      {"lossy", o.lossy_int8 ? nlohmann::json("int8") : nlohmann::json(nullptr)},
                      {"transform", transform_name(o.transform)},
                      {"zstd_level", o.zstd_level},
                      {"chunk_elements", kChunkElements},
                      {"base", {{"path", o.base}, {"fingerprint", rep.base_fingerprint}}},
                      {"tuned", tuned_layout(tuned)}};
  // The header goes first in the file but is known last: reserve room for it (every number at
  // its widest, plus slack), stream the payloads after it, then write it into the room.
  auto full_meta = [&](bool placeholder) {
    nlohmann::json m = meta;
    m["tensors"] = nlohmann::json::array();
    for (const auto& r : records) {
      nlohmann::json j = r.to_json();
      if (placeholder) {
        j["stored"] = std::numeric_limits<uint64_t>::max();
        j["base_hash"] = j["out_hash"] = std::string(16, 'f');
        j["max_abs_error"] = -std::numeric_limits<double>::denorm_min();
        j["rows"] = j["row_len"] = std::numeric_limits<int64_t>::min();
      }
      m["tensors"].push_back(j);
    }
    m["max_abs_error"] =
        placeholder ? -std::numeric_limits<double>::denorm_min() : rep.max_abs_error;
    return m;
  };
  const uint64_t reserve = delta_header(full_meta(true), records, true).size() + 4096;

  OutFile out(o.out);
  out.seek_end(8 + reserve);
  Compressor z(out, o.zstd_level);
  for (auto& r : records) {
    const TensorEntry& t = tuned.get(r.name);
    const TensorEntry* b = r.encoding == "raw" ? nullptr : &base.get(r.name);
    Hasher base_hash;
    Stats st;
    // int8 frames hold a scale and a row per channel, or the row whole where its difference is
    // not finite: their size is known only at the end.
    z.begin(r.encoding == "int8" ? ZSTD_CONTENTSIZE_UNKNOWN : t.nbytes);
    const MappedSpan& ts = tuned.span_of(r.name);
    const MappedSpan bs = b != nullptr ? base.span_of(r.name) : MappedSpan{};
    if (r.encoding == "int8") {
      encode_int8(t, ts, *b, bs, z, r, base_hash, st);
      rep.max_abs_error = std::max(rep.max_abs_error, r.max_abs_error);
    } else {
      const Transform tr = r.encoding == "diff" ? Transform::kDiff : Transform::kXor;
      encode_lossless(t, ts, b, bs, tr, z, r, b != nullptr ? &base_hash : nullptr, st);
    }
    r.stored = z.end();
    if (b != nullptr) {
      r.base_hash = base_hash.hex();
      rep.unchanged_tensors += st.unchanged ? 1 : 0;
    }
  }
  const std::string header = delta_header(full_meta(false), records, false);
  TESSERA_CHECK(header.size() <= reserve, "delta header of ", header.size(),
                " bytes outgrew its reserved ", reserve, " bytes");
  std::string padded = header + std::string(reserve - header.size(), ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(reserve >> (8 * i));
  out.pwrite_all(len, 8, 0);
  out.pwrite_all(padded.data(), padded.size(), 8);
  rep.delta_bytes = out.size();
  out.finish();
  out.commit();
  rep.seconds = seconds_since(t0);
  return rep;
}

ApplyReport apply_delta(const ApplyOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Checkpoint> delta_file;
  try {
    std::error_code ec;
    TESSERA_CHECK(fs::exists(o.delta, ec), "it does not exist");
    TESSERA_CHECK(fs::is_regular_file(o.delta, ec), "not a file");
    delta_file = std::make_unique<Checkpoint>(Checkpoint::open(o.delta, "--delta"));
  } catch (const Error& e) {
    TESSERA_FAIL("--delta '", o.delta,
                 "' is not a readable delta (truncated or corrupt?): ", e.message());
  }
  const Checkpoint& d = *delta_file;
  const auto& md = d.files()[0].st->metadata();
  TESSERA_CHECK(md.count("format") && md.at("format") == kFormat && md.count("tessera_delta"),
                "--delta '", o.delta, "' is not a Tessera delta (no '", kFormat, "' metadata)");
  nlohmann::json meta, files;
  std::vector<Record> records;
  bool sharded = false, lossy = false;
  double recorded_error = 0;
  std::string want, index_json;
  try {
    meta = nlohmann::json::parse(md.at("tessera_delta"));
    TESSERA_CHECK(meta.at("version").get<int>() == kVersion, "--delta '", o.delta,
                  "' has format version ", meta.at("version").dump(), "; this build reads ",
                  kVersion);
    TESSERA_CHECK(meta.at("chunk_elements").get<int64_t>() == kChunkElements, "--delta '", o.delta,
                  "' was cut into chunks of ", meta.at("chunk_elements").dump(), " elements, not ",
                  kChunkElements);
    for (const auto& j : meta.at("tensors")) records.push_back(Record::from_json(j));
    const auto& layout = meta.at("tuned");
    files = layout.at("files");
    sharded = layout.at("sharded").get<bool>();
    if (sharded) index_json = layout.at("index_json").get<std::string>();
    for (const auto& f : files) {
      // Shard names become paths: plain file names only.
      const auto name = f.at("name").get<std::string>();
      TESSERA_CHECK(
          !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..",
          "--delta '", o.delta, "' names the file '", name, "'");
      f.at("header").get<std::string>();
      f.at("size").get<uint64_t>();
    }
    TESSERA_CHECK(!files.empty(), "--delta '", o.delta, "' names no files");
    lossy = !meta.at("lossy").is_null();
    recorded_error = meta.at("max_abs_error").get<double>();
    want = meta.at("base").at("fingerprint").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL("--delta '", o.delta, "' has a malformed description: ", e.what());
  }

  // Every tensor the delta reads must be in the base, as it was; then the fingerprint.
  const Checkpoint base = Checkpoint::open(o.base, "--base");
  std::vector<std::string> used;
  for (const auto& r : records) {
    TESSERA_CHECK(d.contains(r.name) && d.get(r.name).nbytes == r.stored, "--delta '", o.delta,
                  "' lacks the stored data of tensor '", r.name, "' (truncated or corrupt)");
    TESSERA_CHECK(r.file < files.size(), "--delta '", o.delta, "': tensor '", r.name,
                  "' names file ", r.file, " of ", files.size());
    if (r.encoding == "raw") continue;
    TESSERA_CHECK(base.contains(r.name), "--base '", o.base, "' has no tensor '", r.name,
                  "', which the delta was made against: not the delta's base");
    const TensorEntry& b = base.get(r.name);
    TESSERA_CHECK(b.dtype == r.dtype && b.shape == r.shape, "--base '", o.base, "': tensor '",
                  r.name, "' is ", describe_entry(b), " but the delta's base had ",
                  dtype_name(r.dtype), " ", shape_string(r.shape),
                  ": shape or dtype mismatch, not the delta's base");
    used.push_back(r.name);
  }
  const std::string got = fingerprint(base, used);
  TESSERA_CHECK(got == want, "--delta '", o.delta, "' was made against another base: --base '",
                o.base, "' has fingerprint ", got, ", the delta's base ", want);

  // Outputs: the tuned checkpoint's files, each header verbatim, under temporary names.
  const bool to_file = ends_with(o.out, ".safetensors");
  TESSERA_CHECK(!(to_file && sharded), "--out '", o.out, "': the tuned checkpoint had ",
                files.size(), " shards; --out must name a folder");
  std::error_code ec;
  TESSERA_CHECK(to_file || !fs::exists(o.out, ec), "--out '", o.out,
                "' exists; name a new folder (nothing is overwritten)");
  std::unique_ptr<OutDir> dir;
  if (!to_file) dir = std::make_unique<OutDir>(o.out);
  std::vector<std::unique_ptr<OutFile>> outs;
  std::vector<std::map<std::string, uint64_t>> offsets(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    const std::string header = f.at("header").get<std::string>();
    const std::string name = sharded ? f.at("name").get<std::string>() : "model.safetensors";
    outs.push_back(std::make_unique<OutFile>(to_file ? o.out : dir->file(name)));
    uint8_t len[8];
    for (int k = 0; k < 8; ++k) len[k] = static_cast<uint8_t>(header.size() >> (8 * k));
    outs.back()->pwrite_all(len, 8, 0);
    outs.back()->pwrite_all(header.data(), header.size(), 8);
    outs.back()->truncate(f.at("size").get<uint64_t>());
    try {
      const auto h = nlohmann::json::parse(header);
      for (auto& [k, v] : h.items()) {
        if (k != "__metadata__") {
          offsets[i][k] = 8 + header.size() + v.at("data_offsets").at(0).get<uint64_t>();
        }
      }
    } catch (const nlohmann::json::exception& e) {
      TESSERA_FAIL("--delta '", o.delta, "': the stored header of '", name,
                   "' is malformed: ", e.what());
    }
  }

  ApplyReport rep;
  rep.lossy = lossy;
  rep.max_abs_error = recorded_error;
  rep.files = static_cast<int64_t>(files.size());
  for (const auto& r : records) {
    const TensorEntry& stored = d.get(r.name);
    auto it = offsets[r.file].find(r.name);
    TESSERA_CHECK(it != offsets[r.file].end(), "--delta '", o.delta, "': tensor '", r.name,
                  "' is not in the header of its file");
    const Target target{outs[r.file].get(), it->second};
    Decompressor z(d.span_of(r.name), stored.data, stored.nbytes,
                   "--delta '" + o.delta + "': tensor '" + r.name + "'");
    Hasher base_hash, out_hash;
    const TensorEntry* b = r.encoding == "raw" ? nullptr : &base.get(r.name);
    const MappedSpan bs = b != nullptr ? base.span_of(r.name) : MappedSpan{};
    if (r.encoding == "int8") {
      decode_int8(r, *b, bs, z, target, base_hash, out_hash);
    } else {
      TESSERA_CHECK(r.encoding == "xor" || r.encoding == "diff" || r.encoding == "raw", "--delta '",
                    o.delta, "': tensor '", r.name, "' has unknown encoding '", r.encoding, "'");
      const Transform tr = r.encoding == "diff" ? Transform::kDiff : Transform::kXor;
      decode_lossless(r, b, bs, tr, z, target, b != nullptr ? &base_hash : nullptr, out_hash);
    }
    z.finish();
    if (b != nullptr) {
      TESSERA_CHECK(base_hash.hex() == r.base_hash, "--base '", o.base, "': tensor '", r.name,
                    "' differs from the delta's base (hash ", base_hash.hex(), ", expected ",
                    r.base_hash, "): the delta was made against another base");
    }
    TESSERA_CHECK(out_hash.hex() == r.out_hash, "--delta '", o.delta, "' is corrupt: tensor '",
                  r.name, "' rebuilds with hash ", out_hash.hex(), ", expected ", r.out_hash);
    rep.out_bytes += r.bytes;
    ++rep.tensors;
  }
  for (auto& f : outs) f->finish();
  if (to_file) {
    outs[0]->commit();
  } else {
    if (sharded) {
      OutFile index(dir->file("model.safetensors.index.json"));
      index.append(index_json.data(), index_json.size());
      index.finish();
      index.commit();
    }
    for (size_t i = 0; i < outs.size(); ++i) {
      const std::string name =
          sharded ? files[i].at("name").get<std::string>() : "model.safetensors";
      TESSERA_CHECK(std::rename(outs[i]->temp_path().c_str(), dir->file(name).c_str()) == 0,
                    "cannot rename '", outs[i]->temp_path(), "': ", std::strerror(errno));
      outs[i]->keep();
    }
    dir->commit();
  }
  struct stat st {};
  rep.delta_bytes = ::stat(o.delta.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  rep.seconds = seconds_since(t0);
  return rep;
}

}  // namespace tessera::models::delta
