// Range checks of kernel metadata (block tables, sequence lengths, query offsets, slot mappings)
// that CUDA kernels make on the device without a host synchronisation: the first failing thread
// writes a DeviceErrorRecord into pinned host memory mapped into the device, and the host raises
// it lazily, at the next op on that device or at check_device_errors(). The CPU path raises the
// very same message for the same bad entry (metadata_error_message), so a user sees one error
// whatever the device. Torch-free; the CUDA parts exist in CUDA builds only.
#pragma once

#include <cstdint>
#include <string>

namespace tessera::kernels {

// What failed, and the meaning of the record's (i, j, value, limit) fields.
enum class MetadataCheck : int32_t {
  kNone = 0,
  kQStartsFirst = 1,       // q_starts[0] = value, must be 0
  kQStartsLast = 2,        // q_starts[num_seqs = i] = value, must equal total_q = limit
  kQStartsDecreasing = 3,  // q_starts[i] = value > q_starts[i + 1] = limit
  kSeqLenShort = 4,        // seq_lens[i] = value < its query count limit
  kSeqLenLong = 5,         // seq_lens[i] = value > max_blocks_per_seq * block_size = limit
  kBlockOutOfRange = 6,    // block_tables[i][j] = value outside [0, limit = num_blocks)
  kSlotOutOfRange = 7,     // slot_mapping[i] = value >= num_blocks * block_size = limit
  // Sparse decode (kernels/sparse_decode): per (sequence i, kv head j) token lists.
  kSeqLenNegative = 8,    // seq_lens[i] = value < 0
  kCountOutOfRange = 9,   // counts[i][j] = value outside [0, limit = max_entries]
  kEntryOutOfRange = 10,  // idx[i][j][k] = value outside [0, limit = seq_lens[i])
  // Segmented LoRA (kernels/lora): segments i of rows, adapters i.
  kSegIndptrFirst = 11,        // seg_indptr[0] = value, must be 0
  kSegIndptrLast = 12,         // seg_indptr[i = num_segments] = value, must equal num_rows = limit
  kSegIndptrDecreasing = 13,   // seg_indptr[i] = value > seg_indptr[i + 1] = limit
  kSegAdapterOutOfRange = 14,  // seg_adapter[i] = value outside [-1, limit = num_adapters)
  kRankOutOfRange = 15,        // ranks[i] = value outside [0, limit = r_max]
  kScaleNotFinite = 16,        // scales[i] not finite; value = its float32 bits
};

// Written by the device (fields first, code last, after a system-wide fence), read by the host.
struct DeviceErrorRecord {
  volatile int32_t code = 0;  // a MetadataCheck; nonzero once the record is complete
  volatile int32_t k = 0;     // a third index (kEntryOutOfRange)
  volatile int64_t i = 0, j = 0, value = 0, limit = 0;
};

// What a kernel view carries: null pointers (the CPU, or checks off) report nothing.
struct DeviceErrorSlot {
  DeviceErrorRecord* record = nullptr;  // pinned host memory, mapped into the device
  int32_t* claimed = nullptr;           // device memory: 0, then 1 once a thread has reported
};

// The one-line message of a failed check (the CPU path throws the same text).
std::string metadata_error_message(MetadataCheck check, int64_t i, int64_t j, int64_t value,
                                   int64_t limit, int64_t k = 0);
std::string metadata_error_message(const DeviceErrorRecord& record);

// If `record` holds an error: clears it and throws tessera::Error with its message; otherwise
// returns. Host-side logic only (tests run it without a GPU, on a record in plain memory).
void raise_recorded_error(DeviceErrorRecord* record);

#ifdef TESSERA_WITH_CUDA
// The slot of CUDA device `device`: allocated on first use (mapped pinned memory for the record,
// device memory for the claim), kept for the life of the process.
DeviceErrorSlot device_error_slot(int device);
// Raises the error a kernel on `device` has recorded, if any (then re-arms the slot). Cheap: one
// read of host memory, no synchronisation; an error still being written shows at the next call.
void check_device_errors(int device);
// "cudaErrorInvalidValue (invalid argument)" for a cudaError_t value.
std::string cuda_error_text(int rc);
#endif

}  // namespace tessera::kernels
