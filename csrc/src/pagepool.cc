#include "pagepool.h"

#include <string>

namespace kvf {

PagePool::PagePool(int32_t num_pages) {
  if (num_pages <= 0) bad_argument("the KV page pool needs at least one page, got " + std::to_string(num_pages));
  in_use_.assign((size_t)num_pages, 0);
  free_list_.reserve((size_t)num_pages);
  for (int32_t p = num_pages - 1; p >= 0; p--) free_list_.push_back(p);
}

std::optional<int32_t> PagePool::alloc() {
  if (free_list_.empty()) return std::nullopt;
  int32_t p = free_list_.back();
  free_list_.pop_back();
  KVF_CHECK(!in_use_[p], "page on the free list is marked used");
  in_use_[p] = 1;
  return p;
}

bool PagePool::alloc_n(int32_t n, std::vector<int32_t>& out) {
  KVF_CHECK(n >= 0, "negative page count");
  if ((int32_t)free_list_.size() < n) return false;
  for (int32_t i = 0; i < n; i++) out.push_back(*alloc());
  return true;
}

void PagePool::free(int32_t page) {
  KVF_CHECK(page >= 0 && page < total(), "freeing page " + std::to_string(page) + " outside the pool");
  KVF_CHECK(in_use_[page], "double free of page " + std::to_string(page));
  in_use_[page] = 0;
  free_list_.push_back(page);
}

int32_t SeqCache::pages_held() const {
  int32_t n = 0;
  for (const auto& h : heads) n += (int32_t)h.pages.size();
  return n;
}

int64_t SeqCache::tokens_held() const {
  int64_t n = 0;
  for (const auto& h : heads) n += h.len();
  return n;
}

int32_t SeqCache::pages_for_append() const {
  int32_t n = 0;
  for (const auto& h : heads) n += (h.len() == (int32_t)h.pages.size() * P) ? 1 : 0;
  return n;
}

void SeqCache::release(PagePool& pool) {
  for (auto& h : heads) {
    for (int32_t p : h.pages) pool.free(p);
    h.pages.clear();
    h.pos.clear();
  }
}

}  // namespace kvf
