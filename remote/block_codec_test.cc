#include "remote/block_codec.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvpage::remote {
namespace {

CacheConfig Shape() {
  return {.num_layers = 4,
          .num_kv_heads = 2,
          .head_dim = 8,
          .dtype = DType::kF16,
          .block_tokens = 16,
          .num_blocks = 8,
          .max_seq_len = 64};
}

std::string Payload(size_t n) {
  std::string p(n, '\0');
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(i * 7 + 3);
  return p;
}

TEST(BlockCodec, RoundTrip) {
  const BlockHeader h{.fingerprint = 0x1122334455667788,
                      .chain_hash = 0xabcdef0123456789,
                      .table = 3,
                      .format = RemoteFormat::kInt8};
  const std::string payload = Payload(1024);
  const std::string value = EncodeBlock(h, payload);
  EXPECT_EQ(value.size(), payload.size() + kBlockHeaderBytes);
  absl::StatusOr<DecodedBlock> d = DecodeBlock(value, h);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->format, RemoteFormat::kInt8);
  EXPECT_EQ(d->payload, payload);
  EXPECT_EQ(BlockKey(h.fingerprint, h.chain_hash, 3),
            "kvpage:1:1122334455667788:abcdef0123456789:3");
}

// A value a server corrupted, cut short or mixed up is never read as a
// block: every flipped byte and every truncation is an error.
TEST(BlockCodec, EveryCorruptionIsAnError) {
  const BlockHeader h{.fingerprint = 7, .chain_hash = 9, .table = 1};
  const std::string value = EncodeBlock(h, Payload(200));
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] = static_cast<char>(bad[i] ^ 0x20);
    absl::StatusOr<DecodedBlock> d = DecodeBlock(bad, h);
    ASSERT_FALSE(d.ok()) << "byte " << i;
  }
  for (size_t n = 0; n < value.size(); ++n) {
    absl::StatusOr<DecodedBlock> d = DecodeBlock(value.substr(0, n), h);
    ASSERT_FALSE(d.ok()) << n;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss) << n;
  }
  EXPECT_EQ(DecodeBlock(value + "x", h).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(BlockCodec, AnotherModelsBlockIsRefused) {
  const BlockHeader h{.fingerprint = 7, .chain_hash = 9, .table = 1};
  const std::string value = EncodeBlock(h, Payload(64));
  for (BlockHeader want :
       {BlockHeader{.fingerprint = 8, .chain_hash = 9, .table = 1},
        BlockHeader{.fingerprint = 7, .chain_hash = 10, .table = 1},
        BlockHeader{.fingerprint = 7, .chain_hash = 9, .table = 2}}) {
    EXPECT_EQ(DecodeBlock(value, want).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

TEST(BlockCodec, TheFingerprintTellsIncompatibleCachesApart) {
  const CacheConfig c = Shape();
  const std::vector<int> layer0 = {0}, group = {0, 2};
  const uint64_t base = BlockFingerprint(c, "stories15M", layer0);
  EXPECT_EQ(base, BlockFingerprint(c, "stories15M", layer0));
  // What does not change the bytes does not change it.
  CacheConfig same = c;
  same.num_blocks = 999;
  same.max_seq_len = 4096;
  same.compression.enabled = true;
  EXPECT_EQ(base, BlockFingerprint(same, "stories15M", layer0));
  // What does, does.
  std::vector<uint64_t> others = {
      BlockFingerprint(c, "stories42M", layer0),
      BlockFingerprint(c, "stories15M", group),
      BlockFingerprint(c, "stories15M", std::vector<int>{1})};
  for (auto change : {+[](CacheConfig& x) { x.dtype = DType::kBF16; },
                      +[](CacheConfig& x) { x.num_kv_heads = 4; },
                      +[](CacheConfig& x) { x.head_dim = 16; },
                      +[](CacheConfig& x) { x.block_tokens = 32; }}) {
    CacheConfig other = c;
    change(other);
    others.push_back(BlockFingerprint(other, "stories15M", layer0));
  }
  for (uint64_t f : others) EXPECT_NE(f, base);
}

}  // namespace
}  // namespace kvpage::remote
