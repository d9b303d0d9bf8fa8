#include "kernels/common/device_error.h"

#include <bit>

#include "common/error.h"

namespace tessera::kernels {

std::string metadata_error_message(MetadataCheck check, int64_t i, int64_t j, int64_t value,
                                   int64_t limit, int64_t k) {
  using detail::str_cat;
  switch (check) {
    case MetadataCheck::kNone:
      return "no error";
    case MetadataCheck::kQStartsFirst:
      return str_cat("q_starts[0] must be 0, got ", value);
    case MetadataCheck::kQStartsLast:
      return str_cat("q_starts[-1] must equal total_q=", limit, ", got ", value);
    case MetadataCheck::kQStartsDecreasing:
      return str_cat("q_starts must be non-decreasing, got q_starts[", i, "]=", value,
                     " > q_starts[", i + 1, "]=", limit);
    case MetadataCheck::kSeqLenShort:
      return str_cat("seq_lens[", i, "]=", value, " is shorter than its query count ", limit);
    case MetadataCheck::kSeqLenLong:
      return str_cat("seq_lens[", i, "]=", value,
                     " exceeds max_blocks_per_seq * block_size = ", limit);
    case MetadataCheck::kBlockOutOfRange:
      return str_cat("block_tables[", i, "][", j, "]=", value, " is out of range [0, ", limit, ")");
    case MetadataCheck::kSlotOutOfRange:
      return str_cat("slot_mapping[", i, "]=", value,
                     " is beyond the cache's num_blocks * block_size = ", limit);
    case MetadataCheck::kSeqLenNegative:
      return str_cat("seq_lens[", i, "]=", value, " must be >= 0");
    case MetadataCheck::kCountOutOfRange:
      return str_cat("counts[", i, "][", j, "]=", value, " must be in [0, max_entries=", limit,
                     "]");
    case MetadataCheck::kEntryOutOfRange:
      return str_cat("idx[", i, "][", j, "][", k, "]=", value, " is outside [0, seq_lens[", i,
                     "]=", limit, ")");
    case MetadataCheck::kSegIndptrFirst:
      return str_cat("lora: seg_indptr[0] must be 0, got ", value);
    case MetadataCheck::kSegIndptrLast:
      return str_cat("lora: seg_indptr[", i, "] must equal num_rows=", limit, ", got ", value);
    case MetadataCheck::kSegIndptrDecreasing:
      return str_cat("lora: seg_indptr must be non-decreasing, got seg_indptr[", i, "]=", value,
                     " > seg_indptr[", i + 1, "]=", limit);
    case MetadataCheck::kSegAdapterOutOfRange:
      return str_cat("lora: seg_adapter[", i, "]=", value, " is out of range [-1, ", limit, ")");
    case MetadataCheck::kRankOutOfRange:
      return str_cat("lora: ranks[", i, "]=", value, " is out of range [0, r_max=", limit, "]");
    case MetadataCheck::kScaleNotFinite:
      return str_cat("lora: scales[", i, "]=", std::bit_cast<float>(static_cast<uint32_t>(value)),
                     " is not finite");
  }
  return str_cat("unknown metadata check ", static_cast<int32_t>(check));
}

std::string metadata_error_message(const DeviceErrorRecord& r) {
  return metadata_error_message(static_cast<MetadataCheck>(r.code), r.i, r.j, r.value, r.limit,
                                r.k);
}

void raise_recorded_error(DeviceErrorRecord* record) {
  if (record == nullptr || record->code == 0) return;
  // Copy, then clear: the next failure is reported afresh.
  DeviceErrorRecord copy;
  copy.code = record->code;
  copy.i = record->i;
  copy.j = record->j;
  copy.value = record->value;
  copy.limit = record->limit;
  copy.k = record->k;
  record->code = 0;
  TESSERA_FAIL(metadata_error_message(copy));
}

}  // namespace tessera::kernels
