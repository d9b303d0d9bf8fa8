#include "kernels/sparse_decode/sparse_decode_step.h"

#include <omp.h>

#include "common/error.h"

namespace tessera::kernels {

void sparse_decode_step_cpu(std::span<const SparseSequenceIndex* const> seqs,
                            const SparseDecodeView& view, const int64_t* num_tokens) {
  TESSERA_CHECK(static_cast<int>(seqs.size()) == view.num_seqs, "sparse step: ", seqs.size(),
                " indexes for num_seqs=", view.num_seqs);
  if (seqs.empty()) return;
  const int heads = view.kv.num_kv_heads;
  TESSERA_CHECK(
      seqs[0]->num_kv_heads() == heads && seqs[0]->config().group * heads == view.num_q_heads,
      "sparse step: the index has ", seqs[0]->num_kv_heads(), " kv heads x group ",
      seqs[0]->config().group, ", the view ", heads, " kv heads and ", view.num_q_heads,
      " query heads");
  auto* idx = const_cast<int32_t*>(view.idx);
  auto* counts = const_cast<int32_t*>(view.counts);
  const int64_t pairs = static_cast<int64_t>(view.num_seqs) * heads;
  if (pairs < omp_get_max_threads()) {
    // Too few lists to keep every thread busy: select, then split the lists in the attention.
    sparse_select_batch(seqs, view.q, view.q_stride, num_tokens, idx, counts, view.max_entries);
    sparse_decode_cpu(view);
    return;
  }
  // Checks that could throw happen before the parallel region (an exception cannot leave it).
  sparse_select_check(seqs, num_tokens, view.max_entries);
  const int group = seqs[0]->config().group;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t pr = 0; pr < pairs; ++pr) {
    const int s = static_cast<int>(pr / heads);
    const int kh = static_cast<int>(pr % heads);
    const float* q =
        view.q + s * view.q_stride[0] + static_cast<int64_t>(kh) * group * view.q_stride[1];
    counts[pr] = static_cast<int32_t>(seqs[static_cast<size_t>(s)]->head(kh).select(
        q, view.q_stride[1], num_tokens[s], idx + pr * view.max_entries));
    sparse_decode_cpu_list(view, s, kh);
  }
}

}  // namespace tessera::kernels
