#include "tools/stress/backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/naive_cache.h"
#include "kvpage/attention.h"
#include "kvpage/kv_cache.h"

namespace kvpage::stress {

std::string Describe(const SeqLabel& label) {
  return absl::StrFormat("sequence %d (request %d, sample %d)", label.id,
                         label.request, label.sample);
}

namespace {

absl::Status Annotate(const absl::Status& s, absl::string_view what) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

// Compares what a backend reads back with the pattern. One per backend.
class Verifier {
 public:
  explicit Verifier(const Shape& shape)
      : shape_(shape),
        table_(shape.dtype),
        k_(static_cast<size_t>(shape.token_elems)),
        v_(static_cast<size_t>(shape.token_elems)) {}

  // Positions [0, length) of one layer laid out contiguously, K and V
  // planes of token_elems per position, exactly.
  absl::Status Rows(const SeqLabel& label, int layer, const Lineage& lineage,
                    int64_t length, const uint16_t* k, const uint16_t* v) {
    const int64_t e = shape_.token_elems;
    for (int64_t p = 0; p < length; ++p) {
      if (absl::Status s =
              Row(label, layer, p, lineage.StreamAt(p), k + p * e, v + p * e);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // One stored token, exactly.
  absl::Status Row(const SeqLabel& label, int layer, int64_t position,
                   uint64_t stream, const uint16_t* k, const uint16_t* v) {
    const int64_t n = shape_.token_elems;
    FillToken(table_, TokenKey(stream, layer, position, false), n, k_.data());
    FillToken(table_, TokenKey(stream, layer, position, true), n, v_.data());
    ++counters.tokens_verified;
    const size_t bytes = static_cast<size_t>(n) * sizeof(uint16_t);
    if (std::memcmp(k, k_.data(), bytes) == 0 &&
        std::memcmp(v, v_.data(), bytes) == 0) {
      return absl::OkStatus();
    }
    const bool in_keys = std::memcmp(k, k_.data(), bytes) != 0;
    const uint16_t* got = in_keys ? k : v;
    const uint16_t* want = in_keys ? k_.data() : v_.data();
    int64_t e = 0;
    while (e < n && got[e] == want[e]) ++e;
    return absl::DataLossError(absl::StrFormat(
        "%s layer %d position %d: %s element %d (head %d, dim %d) holds bits "
        "0x%04x, the pattern is 0x%04x",
        Describe(label), layer, position, in_keys ? "key" : "value", e,
        e / shape_.head_dim, e % shape_.head_dim, got[e], want[e]));
  }

  // One repacked block (its tokens dequantized into k and v): relative MSE
  // within the bound of its format.
  absl::Status Quantized(const SeqLabel& label, int layer,
                         const BlockView& block, const Lineage& lineage,
                         const float* k, const float* v) {
    const int64_t n = shape_.token_elems;
    double err = 0, ref = 0, worst = -1;
    int64_t worst_position = block.first_position;
    for (int t = 0; t < block.tokens; ++t) {
      const int64_t p = block.first_position + t;
      const uint64_t stream = lineage.StreamAt(p);
      double token_err = 0;
      for (int half = 0; half < 2; ++half) {
        const uint64_t key = TokenKey(stream, layer, p, half == 1);
        const float* got = (half == 0 ? k : v) + t * n;
        for (int64_t e = 0; e < n; ++e) {
          const double want = table_.value[PatternByte(key, e)];
          const double d = got[e] - want;
          token_err += d * d;
          ref += want * want;
        }
      }
      err += token_err;
      if (token_err > worst) {
        worst = token_err;
        worst_position = p;
      }
    }
    counters.tokens_verified += block.tokens;
    ++counters.quantized_blocks_verified;
    const double rel = ref > 0 ? err / ref : err;
    const double bound = block.format == BlockFormat::kInt4
                             ? shape_.quant_bound_int4
                             : shape_.quant_bound_int8;
    if (rel <= bound) return absl::OkStatus();
    return absl::DataLossError(absl::StrFormat(
        "%s layer %d position %d: the %s block holding positions [%d, %d) "
        "reads back with relative MSE %.3g, above the bound %.0e (position "
        "%d is its worst token)",
        Describe(label), layer, worst_position,
        block.format == BlockFormat::kInt4 ? "int4" : "int8",
        block.first_position, block.first_position + block.tokens, rel, bound,
        worst_position));
  }

  // The visible positions of a layer of `length` tokens, as the policy
  // defines them.
  absl::Status Positions(const SeqLabel& label, int layer, int64_t length,
                         const std::vector<int64_t>& got) const {
    const int64_t count = static_cast<int64_t>(got.size());
    const int64_t sinks = shape_.policy == OverflowPolicy::kError
                              ? 0
                              : std::min(shape_.sink_tokens, length);
    int64_t window = length - sinks;
    const bool loose =
        shape_.policy == OverflowPolicy::kTruncate ||
        (shape_.policy != OverflowPolicy::kError && shape_.rollbacks);
    if (loose) {
      // Sinks, then any run of window tokens ending at the last position.
      window = count - sinks;
      if (count > shape_.max_seq_len || (length > sinks && window < 1)) {
        window = -1;
      }
    } else if (shape_.policy != OverflowPolicy::kError) {
      window = std::min(window, shape_.max_seq_len - sinks);
    }
    bool ok = window >= 0 && count == sinks + window;
    for (int64_t i = 0; ok && i < count; ++i) {
      const int64_t want = i < sinks ? i : length - window + (i - sinks);
      ok = got[static_cast<size_t>(i)] == want;
    }
    if (ok) return absl::OkStatus();
    return absl::DataLossError(absl::StrFormat(
        "%s layer %d: %d visible positions from %d to %d for length %d "
        "under policy %s (max_seq_len %d, sinks %d)",
        Describe(label), layer, count, got.empty() ? -1 : got.front(),
        got.empty() ? -1 : got.back(), length,
        OverflowPolicyName(shape_.policy), shape_.max_seq_len,
        shape_.sink_tokens));
  }

  BackendCounters counters;

 private:
  Shape shape_;
  PatternTable table_;
  std::vector<uint16_t> k_, v_;
};

absl::Status LengthMismatch(const SeqLabel& label, int layer, int64_t got,
                            int64_t want) {
  return absl::DataLossError(
      absl::StrFormat("%s layer %d: length %d, the workload wrote %d",
                      Describe(label), layer, got, want));
}

// ---------------------------------------------------------------------------

class PagedBackend final : public Backend {
 public:
  PagedBackend(const BackendParams& p, std::unique_ptr<KVCache> cache)
      : p_(p), cache_(std::move(cache)), verifier_(p.shape) {}

  absl::StatusOr<uint64_t> Add() override { return cache_->AddSequence(); }

  absl::StatusOr<int64_t> MatchPrefix(uint64_t seq,
                                      absl::Span<const int32_t> ids) override {
    if (!p_.prefix_caching) return 0;
    absl::StatusOr<int64_t> matched = cache_->MatchPrefix(seq, ids);
    if (!matched.ok()) return Annotate(matched.status(), "MatchPrefix");
    absl::Status s =
        cache_->AppendTokens(seq, ids.subspan(static_cast<size_t>(*matched)));
    if (!s.ok()) return Annotate(s, "AppendTokens");
    return *matched;
  }

  absl::Status Write(uint64_t seq, int layer, const uint16_t* k,
                     const uint16_t* v, int64_t n, int64_t seq_len) override {
    const TokenSpan ks{.data = k, .dtype = p_.shape.dtype, .tokens = n};
    const TokenSpan vs{.data = v, .dtype = p_.shape.dtype, .tokens = n};
    return cache_->Update(seq, layer, ks, vs, seq_len);
  }

  absl::Status Truncate(uint64_t seq, int64_t seq_len) override {
    return cache_->Truncate(seq, seq_len);
  }

  absl::StatusOr<uint64_t> Fork(uint64_t parent) override {
    return cache_->Fork(parent);
  }

  absl::Status Compress(uint64_t seq, int layer) override {
    return cache_->CompressOldEntries(seq, layer, 0.0);
  }

  absl::Status Release(uint64_t seq) override {
    return cache_->RemoveSequence(seq);
  }

  absl::Status Verify(const SeqLabel& label, const Lineage& lineage,
                      int64_t length, int only_layer) override {
    for (int layer = 0; layer < p_.shape.layers; ++layer) {
      if (only_layer >= 0 && layer != only_layer) continue;
      absl::StatusOr<LayerView> view = cache_->View(label.id, layer);
      if (!view.ok()) return Annotate(view.status(), "View");
      if (view->length != length) {
        return LengthMismatch(label, layer, view->length, length);
      }
      positions_.clear();
      for (const BlockView& b : view->blocks) {
        for (int t = 0; t < b.tokens; ++t) {
          positions_.push_back(b.first_position + t);
        }
      }
      if (absl::Status s =
              verifier_.Positions(label, layer, length, positions_);
          !s.ok()) {
        return s;
      }
      for (const BlockView& b : view->blocks) {
        if (b.format == BlockFormat::kHot) {
          const auto* k = static_cast<const uint16_t*>(b.k);
          const auto* v = static_cast<const uint16_t*>(b.v);
          for (int t = 0; t < b.tokens; ++t) {
            const int64_t p = b.first_position + t;
            const int64_t off = (b.begin_slot + t) * view->token_stride;
            if (absl::Status s = verifier_.Row(
                    label, layer, p, lineage.StreamAt(p), k + off, v + off);
                !s.ok()) {
              return s;
            }
          }
        } else {
          const size_t n = static_cast<size_t>(b.tokens * p_.shape.token_elems);
          kbuf_.resize(n);
          vbuf_.resize(n);
          if (absl::Status s = Dequantize(*view, b, absl::MakeSpan(kbuf_),
                                          absl::MakeSpan(vbuf_));
              !s.ok()) {
            return Annotate(s, "Dequantize");
          }
          if (absl::Status s = verifier_.Quantized(label, layer, b, lineage,
                                                   kbuf_.data(), vbuf_.data());
              !s.ok()) {
            return s;
          }
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status Check() override {
    absl::Status s = cache_->Validate();
    if (s.ok()) ++verifier_.counters.validations;
    return Annotate(s, "KVCache::Validate");
  }

  absl::Status WriteSnapshot(const std::string& path) const override {
    return cache_->WriteSnapshot(path);
  }

  absl::Status Finish() override {
    if (absl::Status s = Check(); !s.ok()) return s;
    const CacheStats stats = cache_->Stats();
    if (stats.blocks_used != 0 || stats.sequences != 0) {
      return absl::DataLossError(absl::StrFormat(
          "after every sequence was released, %d blocks are still in use by "
          "%d sequences",
          stats.blocks_used, stats.sequences));
    }
    return absl::OkStatus();
  }

  MemorySample Sample() const override {
    const CacheStats s = cache_->Stats();
    return {.bytes_held = s.blocks_used * s.block_bytes +
                          s.quant_slots_used * s.quant_slot_bytes,
            .tokens_stored = s.tokens_stored,
            .token_slots = s.slots_allocated,
            .bytes_saved = s.bytes_saved};
  }

  BackendCounters Counters() const override {
    const CacheStats s = cache_->Stats();
    BackendCounters c = verifier_.counters;
    c.bytes_written = s.bytes_written;
    c.bytes_copied = s.bytes_copied;
    c.evictions = s.evictions;
    c.prefix_hits = s.hits;
    c.prefix_misses = s.misses;
    c.compressions = s.compressions_applied;
    c.compressions_skipped = s.compressions_skipped;
    c.decompressions = s.decompressions;
    c.max_quant_error = s.max_quant_error;
    return c;
  }

  // Blocks for every layer of the longest the request's sequences get
  // (prompt, output and draft tokens; two more per layer for a partly
  // filled sink block and a window's partly evicted block), the forks'
  // own blocks besides (one more each for the copy of the shared last
  // block).
  int64_t Cost(const Request& r) const override {
    const CacheConfig& c = p_.paged;
    auto blocks = [&](int64_t tokens) {
      return (std::min(tokens, c.max_seq_len) + c.block_tokens - 1) /
                 c.block_tokens +
             2;
    };
    const int64_t per_layer =
        blocks(r.prompt + r.output + p_.spec_tokens) +
        (p_.samples - 1) * (blocks(r.output + p_.spec_tokens) + 1);
    return per_layer * c.num_layers * BlockBytes(c);
  }

  int64_t Budget() const override {
    return p_.paged.num_blocks * BlockBytes(p_.paged);
  }

 private:
  BackendParams p_;
  std::unique_ptr<KVCache> cache_;
  Verifier verifier_;
  std::vector<int64_t> positions_;
  std::vector<float> kbuf_, vbuf_;
};

// ---------------------------------------------------------------------------

// One buffer per sequence, [layer][k|v][contiguous_tokens][token_elems],
// reserved whole at admission (an accelerator would have to hold it; here
// the kernel commits pages as they are written, so resident memory follows
// what is written while `bytes_held` reports the reservation). A released
// buffer is kept for the next sequence, as an engine reuses its batch slots.
class ContiguousBackend final : public Backend {
 public:
  explicit ContiguousBackend(const BackendParams& p)
      : p_(p),
        verifier_(p.shape),
        plane_elems_(p.contiguous_tokens * p.shape.token_elems),
        buffer_bytes_(2 * p.shape.layers * plane_elems_ *
                      static_cast<int64_t>(sizeof(uint16_t))) {}

  ~ContiguousBackend() override {
    for (auto& [id, seq] : seqs_) Unmap(seq.base);
    for (uint16_t* base : spare_) Unmap(base);
  }

  absl::StatusOr<uint64_t> Add() override {
    Seq seq;
    if (!spare_.empty()) {
      seq.base = spare_.back();
      spare_.pop_back();
    } else {
      void* base = mmap(nullptr, static_cast<size_t>(buffer_bytes_),
                        PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "contiguous: cannot map %d bytes for a sequence", buffer_bytes_));
      }
      // Huge pages when the paged pool asks for them too: the same page
      // faults for both.
      if (p_.paged.huge_pages) {
        madvise(base, static_cast<size_t>(buffer_bytes_), MADV_HUGEPAGE);
      }
      seq.base = static_cast<uint16_t*>(base);
    }
    seq.length.assign(static_cast<size_t>(p_.shape.layers), 0);
    const uint64_t id = next_id_++;
    seqs_.emplace(id, std::move(seq));
    return id;
  }

  absl::StatusOr<int64_t> MatchPrefix(uint64_t,
                                      absl::Span<const int32_t>) override {
    return 0;  // no prefix caching: the prompt is computed again
  }

  absl::Status Write(uint64_t id, int layer, const uint16_t* k,
                     const uint16_t* v, int64_t n, int64_t seq_len) override {
    absl::StatusOr<Seq*> seq = Find(id);
    if (!seq.ok()) return seq.status();
    int64_t& length = (*seq)->length[static_cast<size_t>(layer)];
    const int64_t start = seq_len - n;
    if (start < 0 || start > length || seq_len > p_.contiguous_tokens) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "contiguous: %d tokens to length %d of layer %d (length %d, room "
          "for %d)",
          n, seq_len, layer, length, p_.contiguous_tokens));
    }
    const int64_t e = p_.shape.token_elems;
    const size_t bytes = static_cast<size_t>(n * e) * sizeof(uint16_t);
    std::memcpy(Plane(**seq, layer, false) + start * e, k, bytes);
    std::memcpy(Plane(**seq, layer, true) + start * e, v, bytes);
    length = seq_len;
    bytes_written_ += 2 * static_cast<int64_t>(bytes);
    return absl::OkStatus();
  }

  absl::Status Truncate(uint64_t id, int64_t seq_len) override {
    absl::StatusOr<Seq*> seq = Find(id);
    if (!seq.ok()) return seq.status();
    for (int64_t& l : (*seq)->length) l = std::min(l, seq_len);
    return absl::OkStatus();
  }

  // A fork is a new buffer and a copy of the parent's tokens.
  absl::StatusOr<uint64_t> Fork(uint64_t parent) override {
    if (absl::StatusOr<Seq*> p = Find(parent); !p.ok()) return p.status();
    absl::StatusOr<uint64_t> child = Add();
    if (!child.ok()) return child;
    const Seq& from = seqs_.at(parent);
    Seq& to = seqs_.at(*child);
    for (int layer = 0; layer < p_.shape.layers; ++layer) {
      const int64_t len = from.length[static_cast<size_t>(layer)];
      const size_t bytes =
          static_cast<size_t>(len * p_.shape.token_elems) * sizeof(uint16_t);
      for (bool value : {false, true}) {
        std::memcpy(Plane(to, layer, value), Plane(from, layer, value), bytes);
      }
      to.length[static_cast<size_t>(layer)] = len;
      bytes_copied_ += 2 * static_cast<int64_t>(bytes);
    }
    return child;
  }

  absl::Status Compress(uint64_t, int) override { return absl::OkStatus(); }

  absl::Status Release(uint64_t id) override {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError("contiguous: release");
    spare_.push_back(it->second.base);
    seqs_.erase(it);
    return absl::OkStatus();
  }

  absl::Status Verify(const SeqLabel& label, const Lineage& lineage,
                      int64_t length, int only_layer) override {
    absl::StatusOr<Seq*> seq = Find(label.id);
    if (!seq.ok()) return seq.status();
    for (int layer = 0; layer < p_.shape.layers; ++layer) {
      if (only_layer >= 0 && layer != only_layer) continue;
      const int64_t got = (*seq)->length[static_cast<size_t>(layer)];
      if (got != length) return LengthMismatch(label, layer, got, length);
      if (absl::Status s = verifier_.Rows(label, layer, lineage, length,
                                          Plane(**seq, layer, false),
                                          Plane(**seq, layer, true));
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Check() override { return absl::OkStatus(); }

  absl::Status Finish() override {
    if (seqs_.empty()) return absl::OkStatus();
    return absl::DataLossError(absl::StrFormat(
        "contiguous: %d sequences still hold buffers at the end",
        seqs_.size()));
  }

  MemorySample Sample() const override {
    MemorySample m;
    for (const auto& [id, seq] : seqs_) {
      for (int64_t l : seq.length) m.tokens_stored += l;
    }
    const auto n = static_cast<int64_t>(seqs_.size());
    m.bytes_held = n * buffer_bytes_;
    m.token_slots = n * p_.shape.layers * p_.contiguous_tokens;
    return m;
  }

  BackendCounters Counters() const override {
    BackendCounters c = verifier_.counters;
    c.bytes_written = bytes_written_;
    c.bytes_copied = bytes_copied_;
    return c;
  }

  int64_t Cost(const Request&) const override {
    return p_.samples * buffer_bytes_;
  }
  int64_t Budget() const override { return p_.budget_bytes; }

 private:
  struct Seq {
    uint16_t* base = nullptr;
    std::vector<int64_t> length;  // per layer
  };

  uint16_t* Plane(const Seq& seq, int layer, bool value) const {
    return seq.base + (2 * layer + (value ? 1 : 0)) * plane_elems_;
  }
  absl::StatusOr<Seq*> Find(uint64_t id) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) {
      return absl::NotFoundError(absl::StrCat("contiguous: no sequence ", id));
    }
    return &it->second;
  }
  void Unmap(uint16_t* base) const {
    munmap(base, static_cast<size_t>(buffer_bytes_));
  }

  BackendParams p_;
  Verifier verifier_;
  int64_t plane_elems_, buffer_bytes_;
  absl::flat_hash_map<uint64_t, Seq> seqs_;
  std::vector<uint16_t*> spare_;  // buffers of released sequences
  uint64_t next_id_ = 1;
  int64_t bytes_written_ = 0, bytes_copied_ = 0;
};

// ---------------------------------------------------------------------------

// bench/naive_cache.h per sequence: each update rebuilds the layer's tensors.
class NaiveBackend final : public Backend {
 public:
  explicit NaiveBackend(const BackendParams& p) : p_(p), verifier_(p.shape) {}

  absl::StatusOr<uint64_t> Add() override {
    const uint64_t id = next_id_++;
    if (spare_.empty()) {
      seqs_.emplace(id,
                    bench::NaiveCache(p_.shape.layers, p_.shape.token_elems));
    } else {
      seqs_.emplace(id, std::move(spare_.back()));
      spare_.pop_back();
    }
    return id;
  }

  absl::StatusOr<int64_t> MatchPrefix(uint64_t,
                                      absl::Span<const int32_t>) override {
    return 0;
  }

  absl::Status Write(uint64_t id, int layer, const uint16_t* k,
                     const uint16_t* v, int64_t n, int64_t seq_len) override {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError("naive: write");
    const int64_t e = p_.shape.token_elems;
    const int64_t start = seq_len - n;
    const size_t elems = static_cast<size_t>(n * e);
    absl::Status s = it->second.Update(layer, absl::MakeConstSpan(k, elems),
                                       absl::MakeConstSpan(v, elems), seq_len);
    if (!s.ok()) return s;
    bytes_written_ += 2 * static_cast<int64_t>(elems * sizeof(uint16_t));
    bytes_copied_ += 2 * start * e * static_cast<int64_t>(sizeof(uint16_t));
    return absl::OkStatus();
  }

  absl::Status Truncate(uint64_t id, int64_t seq_len) override {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError("naive: truncate");
    it->second.Truncate(seq_len);
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Fork(uint64_t parent) override {
    auto it = seqs_.find(parent);
    if (it == seqs_.end()) return absl::NotFoundError("naive: fork");
    bench::NaiveCache copy = it->second;
    for (int layer = 0; layer < p_.shape.layers; ++layer) {
      bytes_copied_ += 2 * copy.Length(layer) * p_.shape.token_elems *
                       static_cast<int64_t>(sizeof(uint16_t));
    }
    const uint64_t id = next_id_++;
    seqs_.emplace(id, std::move(copy));
    return id;
  }

  absl::Status Compress(uint64_t, int) override { return absl::OkStatus(); }

  // The released cache keeps its storage for the next sequence, as a
  // caching allocator would hand it back (bench/naive_cache.h: the naive
  // cache is timed at its cheapest, copies and not page faults).
  absl::Status Release(uint64_t id) override {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError("naive: release");
    it->second.Truncate(0);
    spare_.push_back(std::move(it->second));
    seqs_.erase(it);
    return absl::OkStatus();
  }

  absl::Status Verify(const SeqLabel& label, const Lineage& lineage,
                      int64_t length, int only_layer) override {
    auto it = seqs_.find(label.id);
    if (it == seqs_.end()) return absl::NotFoundError("naive: verify");
    const bench::NaiveCache& c = it->second;
    for (int layer = 0; layer < p_.shape.layers; ++layer) {
      if (only_layer >= 0 && layer != only_layer) continue;
      if (c.Length(layer) != length) {
        return LengthMismatch(label, layer, c.Length(layer), length);
      }
      if (absl::Status s =
              verifier_.Rows(label, layer, lineage, length,
                             c.Keys(layer).data(), c.Values(layer).data());
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Check() override { return absl::OkStatus(); }
  absl::Status Finish() override {
    if (seqs_.empty()) return absl::OkStatus();
    return absl::DataLossError(absl::StrFormat(
        "naive: %d sequences still held at the end", seqs_.size()));
  }

  MemorySample Sample() const override {
    MemorySample m;
    int64_t held = 0;
    for (const auto& [id, c] : seqs_) {
      held += c.HeldElements();
      for (int layer = 0; layer < p_.shape.layers; ++layer) {
        m.tokens_stored += c.Length(layer);
      }
    }
    m.bytes_held = held * static_cast<int64_t>(sizeof(uint16_t));
    m.token_slots = held / (2 * p_.shape.token_elems);
    return m;
  }

  BackendCounters Counters() const override {
    BackendCounters c = verifier_.counters;
    c.bytes_written = bytes_written_;
    c.bytes_copied = bytes_copied_;
    return c;
  }

  int64_t Cost(const Request&) const override { return 0; }
  int64_t Budget() const override { return p_.budget_bytes; }

 private:
  BackendParams p_;
  Verifier verifier_;
  absl::flat_hash_map<uint64_t, bench::NaiveCache> seqs_;
  std::vector<bench::NaiveCache> spare_;  // caches of released sequences
  uint64_t next_id_ = 1;
  int64_t bytes_written_ = 0, bytes_copied_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const BackendParams& p) {
  switch (p.kind) {
    case BackendKind::kPaged: {
      absl::StatusOr<std::unique_ptr<KVCache>> cache = KVCache::Create(p.paged);
      if (!cache.ok()) return Annotate(cache.status(), "KVCache::Create");
      return std::unique_ptr<Backend>(
          std::make_unique<PagedBackend>(p, std::move(*cache)));
    }
    case BackendKind::kContiguous:
      return std::unique_ptr<Backend>(std::make_unique<ContiguousBackend>(p));
    case BackendKind::kNaive:
      return std::unique_ptr<Backend>(std::make_unique<NaiveBackend>(p));
  }
  return absl::InvalidArgumentError("unknown backend");
}

}  // namespace kvpage::stress
