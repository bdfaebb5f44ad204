// Page bookkeeping, apart from storage (STYLE.md 5): which pages are free, and per sequence which pages hold
// each (layer, KV head)'s tokens. The K/V bytes live in KVStore (kvstore.h) on the backend's memory.
//
// A page holds P tokens of ONE (layer, KV head). Heads of one sequence hold different lengths after
// compression; that difference is real memory returned to the pool.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "common.h"

namespace kvf {

class PagePool {
 public:
  explicit PagePool(int32_t num_pages);

  int32_t total() const { return (int32_t)in_use_.size(); }
  int32_t num_free() const { return (int32_t)free_list_.size(); }
  int32_t num_used() const { return total() - num_free(); }

  // One page, or nullopt when none is free: an expected condition (the scheduler waits or preempts).
  std::optional<int32_t> alloc();
  // All or nothing: appends n pages to out and returns true, or returns false with out and the pool unchanged.
  bool alloc_n(int32_t n, std::vector<int32_t>& out);
  // Returns a page. Freeing a free page or an id outside the pool is a bug and throws Internal.
  void free(int32_t page);
  bool is_used(int32_t page) const { return page >= 0 && page < total() && in_use_[page]; }

 private:
  std::vector<int32_t> free_list_;  // stack; the lowest ids are handed out first on a fresh pool
  std::vector<uint8_t> in_use_;     // [num_pages]
};

// One (layer, KV head) of one sequence: its pages and the original position of every token it holds.
struct HeadCache {
  std::vector<int32_t> pages;  // ceil(len / P) page ids, in order
  std::vector<int32_t> pos;    // [len] original position of each held token (RoPE already applied to K)
  int32_t len() const { return (int32_t)pos.size(); }
};

// Page tables of one sequence: [L][Hk] -> HeadCache.
struct SeqCache {
  int32_t L = 0, Hk = 0, P = 0;
  std::vector<HeadCache> heads;  // [L * Hk]

  SeqCache() = default;
  SeqCache(int32_t L_, int32_t Hk_, int32_t P_) : L(L_), Hk(Hk_), P(P_), heads((size_t)L_ * Hk_) {}
  HeadCache& at(int32_t l, int32_t h) { return heads[(size_t)l * Hk + h]; }
  const HeadCache& at(int32_t l, int32_t h) const { return heads[(size_t)l * Hk + h]; }

  int32_t pages_held() const;
  int64_t tokens_held() const;
  // Pages one decode step needs: one for each head whose last page is full (or that has no page).
  int32_t pages_for_append() const;
  // Returns every page to the pool and empties the tables.
  void release(PagePool& pool);
};

}  // namespace kvf
