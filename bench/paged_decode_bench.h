// CPU paged decode against the machine's memory bandwidth, measured in the same run: decode reads
// every K/V byte of every sequence once, so its speed limit is a plain streaming read.
#pragma once

#include <nlohmann/json.hpp>

namespace tessera::bench {

// Batch 16 x 4,096 tokens (quick: 16 x 1,024), 16 query heads over 4 KV heads (GQA), head_dim
// 128, block size 16, fp32 pages placed in random blocks. Returns at least
// {"paged_decode_bw_fraction": achieved K+V bytes/s / streaming-read bytes/s, ...}, plus the same
// for int8 pages (scales counted as bytes read).
nlohmann::json run_paged_decode_bench(bool quick);

}  // namespace tessera::bench
