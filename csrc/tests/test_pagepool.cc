#include <set>

#include "check.h"
#include "pagepool.h"

using kvf::PagePool;

TEST_CASE("pagepool: allocates every page once, then reports exhaustion as a value") {
  PagePool pool(8);
  std::set<int32_t> seen;
  for (int i = 0; i < 8; i++) {
    auto p = pool.alloc();
    EXPECT(p.has_value());
    EXPECT(seen.insert(*p).second);
  }
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT(!pool.alloc().has_value());
}

TEST_CASE("pagepool: alloc_n is all or nothing") {
  PagePool pool(5);
  std::vector<int32_t> got;
  EXPECT(pool.alloc_n(3, got));
  EXPECT_EQ((int)got.size(), 3);
  EXPECT(!pool.alloc_n(3, got));
  EXPECT_EQ((int)got.size(), 3);  // unchanged on failure
  EXPECT_EQ(pool.num_free(), 2);
}

TEST_CASE("pagepool: double free and out-of-range free are bugs") {
  PagePool pool(4);
  auto p = *pool.alloc();
  pool.free(p);
  bool internal = false;
  try { pool.free(p); } catch (const kvf::Error& e) { internal = e.kind == kvf::ErrorKind::Internal; }
  EXPECT(internal);
  EXPECT_THROWS(pool.free(99));
  EXPECT_THROWS(pool.free(-1));
}

TEST_CASE("pagepool: fragmentation - freed pages in any order are reused and the count stays exact") {
  PagePool pool(16);
  std::vector<int32_t> a;
  EXPECT(pool.alloc_n(16, a));
  for (size_t i = 0; i < a.size(); i += 2) pool.free(a[i]);  // every other page
  EXPECT_EQ(pool.num_free(), 8);
  std::vector<int32_t> b;
  EXPECT(pool.alloc_n(8, b));
  std::set<int32_t> freed;
  for (size_t i = 0; i < a.size(); i += 2) freed.insert(a[i]);
  for (int32_t p : b) EXPECT(freed.count(p) == 1);
  EXPECT_EQ(pool.num_free(), 0);
}

TEST_CASE("pagepool: a sequence's tables release every page") {
  PagePool pool(32);
  kvf::SeqCache c(2, 2, 4);
  // heads hold different lengths: 1, 4, 5, 9 tokens
  int lens[4] = {1, 4, 5, 9};
  for (int i = 0; i < 4; i++) {
    auto& h = c.heads[i];
    int pages = (lens[i] + 3) / 4;
    EXPECT(pool.alloc_n(pages, h.pages));
    for (int t = 0; t < lens[i]; t++) h.pos.push_back(t);
  }
  EXPECT_EQ(c.pages_held(), 1 + 1 + 2 + 3);
  EXPECT_EQ((int)c.tokens_held(), 19);
  EXPECT_EQ(c.pages_for_append(), 1);  // only the head holding 4 tokens has a full last page
  c.release(pool);
  EXPECT_EQ(pool.num_free(), 32);
  EXPECT_EQ(c.pages_held(), 0);
}

TEST_CASE("pagepool: an empty pool is a bad argument") {
  EXPECT_THROWS(PagePool(0));
}
