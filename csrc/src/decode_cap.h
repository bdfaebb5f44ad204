// Decode cap (ENGINE.md, "Decode"): when a layer's mean per-head length passes D + P, rescore its cached keys
// with the last w queries, keep the newest w tokens of every head, choose the rest as prefill does (Ada or
// uniform), and compact: surviving tokens move into holes so whole pages at each head's end return to the pool.
// Prepare, then apply (STYLE.md 7): plan_compaction has no side effects; the engine applies the plan in one go.
#pragma once
#include <cstdint>
#include <vector>

namespace kvf {

// Allocation over heads of different lengths. S[h] holds head h's prefix scores (its own length). Uniform:
// each head keeps its top min(Bp, |S[h]|). Ada: each head first keeps its top min(floor(alpha * Bp), |S[h]|), then
// the highest remaining scores over all heads fill the layer up to min(Hk * Bp, total) positions. Ties: higher
// score, then lower head, then lower position. kept[h] sorted ascending.
void allocate_ragged(const std::vector<std::vector<float>>& S, int32_t Bp, float alpha, bool ada,
                     std::vector<std::vector<int32_t>>& kept);

// One head's compaction: token index kept[i] (ascending) moves to index i. Moves in ascending order never
// overwrite a token that a later move reads (kept[i] >= i). Pages past ceil(|kept| / P) are freed.
struct HeadCompaction {
  std::vector<int32_t> src_page, src_slot, dst_page, dst_slot;  // moves, in order
  std::vector<int32_t> free_pages;                               // pages to return after the moves
  std::vector<int32_t> new_pos;                                  // positions held afterwards
  std::vector<int32_t> new_pages;                                // page list afterwards
};
HeadCompaction plan_compaction(const std::vector<int32_t>& pages, const std::vector<int32_t>& pos,
                               const std::vector<int32_t>& kept, int32_t P);

}  // namespace kvf
