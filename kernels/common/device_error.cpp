#include "kernels/common/device_error.h"

#include "common/error.h"

namespace tessera::kernels {

std::string metadata_error_message(MetadataCheck check, int64_t i, int64_t j, int64_t value,
                                   int64_t limit) {
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
  }
  return str_cat("unknown metadata check ", static_cast<int32_t>(check));
}

std::string metadata_error_message(const DeviceErrorRecord& r) {
  return metadata_error_message(static_cast<MetadataCheck>(r.code), r.i, r.j, r.value, r.limit);
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
  record->code = 0;
  TESSERA_FAIL(metadata_error_message(copy));
}

}  // namespace tessera::kernels
