// One sparse decode step on the CPU: token selection (kernels/sparse_decode/sparse_select.h) and
// attention over the chosen tokens (sparse_attention.h) for a batch, fused per (sequence, kv
// head): each pair is selected and attended by the same thread in one parallel region, so no
// barrier separates the two (a small batch of long lists falls back to split attention).
#pragma once

#include <cstdint>
#include <span>

#include "kernels/sparse_decode/sparse_attention.h"
#include "kernels/sparse_decode/sparse_select.h"

namespace tessera::kernels {

// view: q, kv, block_tables, out, lse, strides, num_seqs, num_q_heads, scale as for
// sparse_decode_cpu; view.idx / view.counts are the buffers the selection fills ([num_seqs,
// num_kv_heads, max_entries] / [num_seqs, num_kv_heads]). num_tokens [num_seqs]: cached tokens.
// Every index must be up to date (SparseSequenceIndex::update) and share the view's group.
void sparse_decode_step_cpu(std::span<const SparseSequenceIndex* const> seqs,
                            const SparseDecodeView& view, const int64_t* num_tokens);

}  // namespace tessera::kernels
