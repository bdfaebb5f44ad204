#include "decode_cap.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common.h"
#include "compress.h"

namespace kvf {

namespace {
// indices of head h's top k scores: higher score first, then lower position
std::vector<int32_t> top_k_of(const std::vector<float>& s, int32_t k) {
  std::vector<int32_t> idx(s.size());
  for (size_t i = 0; i < idx.size(); i++) idx[i] = (int32_t)i;
  k = std::min<int32_t>(k, (int32_t)idx.size());
  auto better = [&](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
  idx.resize(k);
  return idx;
}
}  // namespace

void allocate_ragged(const std::vector<std::vector<float>>& S, int32_t Bp, float alpha, bool ada,
                     std::vector<std::vector<int32_t>>& kept) {
  const int32_t Hk = (int32_t)S.size();
  KVF_CHECK(Bp >= 0, "negative prefix budget");
  kept.assign(Hk, {});
  if (!ada) {
    for (int32_t h = 0; h < Hk; h++) kept[h] = top_k_of(S[h], Bp);
  } else {
    const int32_t f = safeguard_floor(alpha, Bp);
    std::vector<std::vector<uint8_t>> taken(Hk);
    int64_t total = 0, used = 0;
    for (int32_t h = 0; h < Hk; h++) {
      kept[h] = top_k_of(S[h], f);
      taken[h].assign(S[h].size(), 0);
      for (int32_t j : kept[h]) taken[h][j] = 1;
      used += (int64_t)kept[h].size();
      total += (int64_t)S[h].size();
    }
    int64_t remaining = std::min<int64_t>((int64_t)Hk * Bp, total) - used;
    if (remaining > 0) {
      std::vector<std::tuple<float, int32_t, int32_t>> cand;  // (score, head, position)
      for (int32_t h = 0; h < Hk; h++)
        for (int32_t j = 0; j < (int32_t)S[h].size(); j++)
          if (!taken[h][j]) cand.emplace_back(S[h][j], h, j);
      auto better = [](const auto& a, const auto& b) {
        if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);
        if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) < std::get<1>(b);
        return std::get<2>(a) < std::get<2>(b);
      };
      const size_t k = (size_t)std::min<int64_t>(remaining, (int64_t)cand.size());
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), better);
      for (size_t i = 0; i < k; i++) kept[std::get<1>(cand[i])].push_back(std::get<2>(cand[i]));
    }
  }
  for (auto& kh : kept) std::sort(kh.begin(), kh.end());
}

HeadCompaction plan_compaction(const std::vector<int32_t>& pages, const std::vector<int32_t>& pos,
                               const std::vector<int32_t>& kept, int32_t P) {
  HeadCompaction c;
  const int32_t len = (int32_t)pos.size();
  KVF_CHECK((int32_t)pages.size() == (len + P - 1) / P, "page list does not match the head's length");
  for (size_t i = 0; i < kept.size(); i++) {
    const int32_t src = kept[i], dst = (int32_t)i;
    KVF_CHECK(src >= dst && src < len, "compaction source out of order or range");
    KVF_CHECK(i == 0 || kept[i] > kept[i - 1], "kept indices not strictly ascending");
    c.new_pos.push_back(pos[src]);
    if (src == dst) continue;
    c.src_page.push_back(pages[src / P]);
    c.src_slot.push_back(src % P);
    c.dst_page.push_back(pages[dst / P]);
    c.dst_slot.push_back(dst % P);
  }
  const size_t keep_pages = (kept.size() + P - 1) / P;
  c.new_pages.assign(pages.begin(), pages.begin() + keep_pages);
  c.free_pages.assign(pages.begin() + keep_pages, pages.end());
  return c;
}

}  // namespace kvf
