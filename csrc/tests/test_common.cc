#include "check.h"
#include "common.h"
#include "device.h"

TEST_CASE("f16 round trip is exact for every finite half") {
  for (uint32_t h = 0; h < 0x10000; h++) {
    if (((h >> 10) & 0x1f) == 31) continue;  // inf / nan
    float f = kvf::f16_to_f32((uint16_t)h);
    EXPECT_EQ((uint32_t)kvf::f32_to_f16(f), h);
  }
}

TEST_CASE("f32 to f16 rounds to nearest even") {
  EXPECT_EQ(kvf::f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(kvf::f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);          // tie -> even
  EXPECT_EQ(kvf::f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);          // tie -> even (up)
  EXPECT_EQ(kvf::f32_to_f16(65520.0f), 0x7c00);                    // rounds to inf
  EXPECT_EQ(kvf::f32_to_f16(5.960464477539063e-08f), 0x0001);      // smallest subnormal
  EXPECT_EQ(kvf::f32_to_f16(2.98023223876953125e-08f), 0x0000);    // half of it: tie -> even zero
}

TEST_CASE("bf16 round trip and rounding") {
  EXPECT_EQ(kvf::f32_to_bf16(1.0f), 0x3f80);
  EXPECT_NEAR(kvf::bf16_to_f32(kvf::f32_to_bf16(3.14159f)), 3.140625, 1e-7);
}

TEST_CASE("device query answers without a GPU") {
  kvf::DeviceInfo d = kvf::query_device();
  EXPECT(d.cuda_usable || !d.reason.empty());
}
