// Device side of kernels/common/device_error.h: the first thread to find bad metadata claims the
// slot (an atomic in device memory), writes the record into mapped host memory and publishes it
// with a system-wide fence before its code, so the host never reads a half-written record.
#pragma once

#include "kernels/common/device_error.h"

namespace tessera::kernels {

__device__ inline void report_device_error(const DeviceErrorSlot& slot, MetadataCheck check,
                                           int64_t i, int64_t j, int64_t value, int64_t limit,
                                           int32_t k = 0) {
  if (slot.record == nullptr || slot.claimed == nullptr) return;
  if (atomicCAS(slot.claimed, 0, 1) != 0) return;  // someone else reports
  DeviceErrorRecord* r = slot.record;
  r->i = i;
  r->j = j;
  r->value = value;
  r->limit = limit;
  r->k = k;
  __threadfence_system();
  r->code = static_cast<int32_t>(check);
  __threadfence_system();
}

}  // namespace tessera::kernels
