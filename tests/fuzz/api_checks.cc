// The API fuzzer's checks after every operation, and of refused calls
// (api_harness.h lists them).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvpage/kvpage.h"
#include "tests/fuzz/api_harness.h"

namespace kvpage::fuzz {

Harness::Observed Harness::Observe() {
  absl::StatusOr<Snapshot> snap =
      cache_->TakeSnapshot({.include_token_data = true});
  Expect(snap.ok(), "TakeSnapshot: ", snap.status().ToString());
  return {cache_->Stats(), *std::move(snap)};
}

void Harness::ExpectRefused(const absl::Status& s, absl::StatusCode want,
                            const Observed& before) {
  Expect(s.code() == want, "want ", absl::StatusCodeToString(want), ", got ",
         s.ToString());
  Expect(!s.message().empty(), "an error without a message");
  const Observed after = Observe();
  Expect(after.stats == before.stats, "a refused call changed Stats()");
  Expect(after.snapshot == before.snapshot,
         "a refused call changed the snapshot");
}

uint64_t Harness::BlockKey(Seq& s, int64_t p) {
  const int64_t bt = c_.block_tokens;
  return s.Chain((p / bt + 1) * bt - 1);
}

void Harness::CheckAll() {
  const absl::Status valid = cache_->Validate();
  Expect(valid.ok(), "Validate: ", valid.ToString());
  const Observed now = Observe();
  const std::vector<SnapshotViolation> violations =
      VerifySnapshot(now.snapshot);
  Expect(violations.empty(),
         "VerifySnapshot: ", violations.empty() ? "" : violations.front().check,
         ": ", violations.empty() ? "" : violations.front().message);
  absl::StatusOr<Snapshot> parsed = ParseSnapshot(EncodeSnapshot(now.snapshot));
  Expect(parsed.ok(), "ParseSnapshot: ", parsed.status().ToString());
  Expect(*parsed == now.snapshot, "a snapshot does not round-trip");
  const CacheStats& s = now.stats;
  Expect(s == now.snapshot.stats, "Stats() and the snapshot disagree");
  Expect(s.sequences == static_cast<int64_t>(seqs_.size()), "sequences ",
         s.sequences, ", model ", seqs_.size());
  Expect(cache_->Sequences() == Live(), "Sequences() differs");
  Expect(s.blocks_used + s.blocks_cached + s.blocks_free == s.blocks_total &&
             s.blocks_used >= 0 && s.blocks_cached >= 0 && s.blocks_free >= 0,
         "blocks: ", s.blocks_used, " used ", s.blocks_cached, " cached ",
         s.blocks_free, " free of ", s.blocks_total);
  Expect(s.evictions == evictions_, "evictions ", s.evictions, ", model ",
         evictions_);
  Expect(s.bytes_written == bytes_written_, "bytes_written ", s.bytes_written,
         ", model ", bytes_written_);
  Expect(s.hits == hits_ && s.misses == misses_, "hits/misses ", s.hits, "/",
         s.misses, ", model ", hits_, "/", misses_);
  Expect(std::isfinite(s.max_quant_error) &&
             std::isfinite(s.mean_quant_error) &&
             // The mean of equal errors may round an ulp above them.
             s.max_quant_error >= s.mean_quant_error * (1 - 1e-12),
         "quant error statistics ", s.max_quant_error, " ", s.mean_quant_error);
  int64_t visible = 0;
  for (auto& [id, seq] : seqs_) {
    int64_t longest = 0, max_length = 0, tokens = 0, evicted = 0, held = 0;
    for (int layer = 0; layer < c_.num_layers; ++layer) {
      Layer& l = seq.layers[static_cast<size_t>(layer)];
      CheckLayer(id, seq, layer);
      RecordVersions(seq, layer);
      longest = std::max<int64_t>(longest, static_cast<int64_t>(l.pos.size()));
      max_length = std::max(max_length, l.max_length);
      tokens += VisibleCount(l);
      evicted += l.evicted;
      held += BlocksWithVisible(l, c_.block_tokens, 0,
                                static_cast<int64_t>(l.pos.size()));
    }
    visible += tokens;
    absl::StatusOr<SequenceStats> ss = cache_->Stats(id);
    Expect(ss.ok(), "Stats(", id, "): ", ss.status().ToString());
    Expect(ss->current_length == longest && ss->max_length == max_length &&
               ss->tokens_stored == tokens && ss->evictions == evicted &&
               ss->blocks >= held,
           "Stats(", id, "): length ", ss->current_length, "/", longest,
           " max ", ss->max_length, "/", max_length, " tokens ",
           ss->tokens_stored, "/", tokens, " evictions ", ss->evictions, "/",
           evicted, " blocks ", ss->blocks, " >= ", held);
  }
  Expect(s.tokens_stored == visible, "tokens_stored ", s.tokens_stored,
         ", model ", visible);
}

void Harness::CheckLayer(SeqId id, Seq& seq, int layer) {
  Layer& l = seq.layers[static_cast<size_t>(layer)];
  absl::StatusOr<int64_t> length = cache_->Length(id, layer);
  Expect(length.ok() && *length == static_cast<int64_t>(l.pos.size()),
         "Length(", id, ", ", layer, ") ", length.ok() ? *length : -1,
         ", model ", l.pos.size());
  absl::StatusOr<GatheredLayer> g = cache_->Gather(id, layer);
  absl::StatusOr<LayerView> view = cache_->View(id, layer);
  Expect(g.ok() && view.ok(), "Gather/View failed");
  std::vector<int64_t> want;
  for (size_t p = 0; p < l.pos.size(); ++p) {
    if (l.pos[p].visible) want.push_back(static_cast<int64_t>(p));
  }
  Expect(g->positions == want, "Gather(", id, ", ", layer, ") gives ",
         g->positions.size(), " positions, the model ", want.size());
  Expect(view->length == static_cast<int64_t>(l.pos.size()) &&
             view->tokens() == static_cast<int64_t>(want.size()),
         "View(", id, ", ", layer, "): length ", view->length, " tokens ",
         view->tokens());
  size_t next = 0;  // into g->positions
  std::vector<float> bk, bv;
  for (const BlockView& b : view->blocks) {
    for (int i = 0; i < b.tokens; ++i) {
      Expect(next + static_cast<size_t>(i) < want.size() &&
                 want[next + static_cast<size_t>(i)] == b.first_position + i,
             "View(", id, ", ", layer, "): block ", b.block_id,
             " names position ", b.first_position + i, " out of order");
    }
    const size_t from = next * static_cast<size_t>(elems_);
    const size_t n = static_cast<size_t>(b.tokens * elems_);
    if (view->host_accessible) {
      bk.assign(n, 0);
      bv.assign(n, 0);
      const absl::Status s =
          Dequantize(*view, b, absl::MakeSpan(bk), absl::MakeSpan(bv));
      Expect(s.ok(), "Dequantize: ", s.ToString());
      for (size_t i = 0; i < n; ++i) {
        Expect(Same(bk[i], g->k[from + i]) && Same(bv[i], g->v[from + i]),
               "Dequantize and Gather disagree at ",
               Where(id, layer,
                     b.first_position + static_cast<int64_t>(i) / elems_));
      }
    }
    if (b.format == BlockFormat::kHot) {
      CheckHot(id, seq, layer, *g, next, b.tokens);
    } else {
      CheckCompressed(id, seq, layer, *g, next, b, view->quant_group_size);
    }
    next += static_cast<size_t>(b.tokens);
  }
  Expect(next == want.size(), "View covers ", next, " of ", want.size(),
         " visible positions");
}

void Harness::CheckHot(SeqId id, Seq& seq, int layer, const GatheredLayer& g,
                       size_t first, int tokens) {
  Layer& l = seq.layers[static_cast<size_t>(layer)];
  for (size_t t = first; t < first + static_cast<size_t>(tokens); ++t) {
    const int64_t p = g.positions[t];
    Pos& at = l.pos[static_cast<size_t>(p)];
    for (int64_t e = 0; e < elems_; ++e) {
      const size_t i = t * static_cast<size_t>(elems_) + static_cast<size_t>(e);
      float& k = at.k[static_cast<size_t>(e)];
      float& v = at.v[static_cast<size_t>(e)];
      const float want_k = at.lossy ? RoundTo(c_.dtype, k) : k;
      const float want_v = at.lossy ? RoundTo(c_.dtype, v) : v;
      Expect(Same(g.k[i], want_k) && Same(g.v[i], want_v), Where(id, layer, p),
             " element ", e, ": read ", g.k[i], "/", g.v[i], ", wrote ", want_k,
             "/", want_v);
      k = g.k[i];
      v = g.v[i];
    }
  }
}

void Harness::CheckCompressed(SeqId id, Seq& seq, int layer,
                              const GatheredLayer& g, size_t first,
                              const BlockView& b, int group) {
  Layer& l = seq.layers[static_cast<size_t>(layer)];
  const bool int4 = b.format == BlockFormat::kInt4;
  const double steps = int4 ? 15.0 : 127.0;
  const auto tolerance = [&](double lo, double hi) {
    const double magnitude = std::max(std::fabs(lo), std::fabs(hi));
    const double span = int4 ? hi - lo : magnitude;
    return span * (0.5 / steps + 1.0 / 512) + magnitude / 512 + 1e-5;
  };
  const size_t tokens = static_cast<size_t>(b.tokens);
  auto pos = [&](size_t t) -> Pos& {
    return l.pos[static_cast<size_t>(g.positions[first + t])];
  };
  for (size_t t = 0; t < tokens; ++t) {
    Pos& at = pos(t);
    for (int64_t e = 0; e < elems_; ++e) {
      for (float x :
           {at.k[static_cast<size_t>(e)], at.v[static_cast<size_t>(e)]}) {
        Expect(std::isfinite(x) && std::fabs(x) <= 65504.0f,
               Where(id, layer, g.positions[first + t]), " holds ", x,
               " but its block was compressed");
      }
    }
  }
  for (int64_t e = 0; e < elems_; ++e) {  // keys, per channel
    double lo = INFINITY, hi = -INFINITY;
    for (size_t t = 0; t < tokens; ++t) {
      const double x = pos(t).k[static_cast<size_t>(e)];
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    const double tol = tolerance(lo, hi);
    for (size_t t = 0; t < tokens; ++t) {
      const size_t i =
          (first + t) * static_cast<size_t>(elems_) + static_cast<size_t>(e);
      const double want = pos(t).k[static_cast<size_t>(e)];
      Expect(std::fabs(g.k[i] - want) <= tol,
             Where(id, layer, g.positions[first + t]), " key ", e, ": read ",
             g.k[i], " from an int", int4 ? 4 : 8, " block, held ", want,
             " (bound ", tol, ")");
    }
  }
  for (size_t t = 0; t < tokens; ++t) {  // values, per token and group
    for (int64_t g0 = 0; g0 < elems_; g0 += group) {
      double lo = INFINITY, hi = -INFINITY;
      for (int64_t e = g0; e < g0 + group; ++e) {
        const double x = pos(t).v[static_cast<size_t>(e)];
        lo = std::min(lo, x);
        hi = std::max(hi, x);
      }
      const double tol = tolerance(lo, hi);
      for (int64_t e = g0; e < g0 + group; ++e) {
        const size_t i =
            (first + t) * static_cast<size_t>(elems_) + static_cast<size_t>(e);
        const double want = pos(t).v[static_cast<size_t>(e)];
        Expect(std::fabs(g.v[i] - want) <= tol,
               Where(id, layer, g.positions[first + t]), " value ", e,
               ": read ", g.v[i], " from an int", int4 ? 4 : 8, " block, held ",
               want, " (bound ", tol, ")");
      }
    }
  }
  for (size_t t = 0; t < tokens; ++t) {
    Pos& at = pos(t);
    const size_t from = (first + t) * static_cast<size_t>(elems_);
    for (int64_t e = 0; e < elems_; ++e) {
      at.k[static_cast<size_t>(e)] = g.k[from + static_cast<size_t>(e)];
      at.v[static_cast<size_t>(e)] = g.v[from + static_cast<size_t>(e)];
    }
    at.lossy = true;
  }
}

void Harness::AdoptPublished(SeqId id, Seq& s, int layer, int64_t blocks) {
  Layer& l = s.layers[static_cast<size_t>(layer)];
  absl::StatusOr<GatheredLayer> g = cache_->Gather(id, layer);
  Expect(g.ok(), "Gather: ", g.status().ToString());
  const int64_t bt = c_.block_tokens;
  for (int64_t b = 0; b < blocks; ++b) {
    const std::vector<float> read = Content(*g, b * bt, bt);
    std::vector<float> wrote;
    for (int64_t p = b * bt; p < (b + 1) * bt; ++p) {
      const Pos& at = l.pos[static_cast<size_t>(p)];
      wrote.insert(wrote.end(), at.k.begin(), at.k.end());
      wrote.insert(wrote.end(), at.v.begin(), at.v.end());
    }
    if (SameContent(read, wrote)) continue;
    const auto it = versions_.find({BlockKey(s, b * bt), layer});
    const bool known = it != versions_.end() &&
                       std::any_of(it->second.begin(), it->second.end(),
                                   [&](const std::vector<float>& v) {
                                     return SameContent(read, v);
                                   });
    Expect(known, "MatchPrefix attached to seq ", id, " layer ", layer,
           " block ", b,
           " a block holding what no sequence held under those ids");
    for (int64_t p = b * bt; p < (b + 1) * bt; ++p) {
      Pos& at = l.pos[static_cast<size_t>(p)];
      at.lossy = at.foreign = true;
      const size_t from = static_cast<size_t>(p * elems_);
      at.k.assign(g->k.begin() + from, g->k.begin() + from + elems_);
      at.v.assign(g->v.begin() + from, g->v.begin() + from + elems_);
    }
  }
}

std::vector<float> Harness::Content(const GatheredLayer& g, int64_t from,
                                    int64_t n) const {
  std::vector<float> out;
  for (int64_t p = from; p < from + n; ++p) {
    const size_t at = static_cast<size_t>(p * elems_);
    out.insert(out.end(), g.k.begin() + at, g.k.begin() + at + elems_);
    out.insert(out.end(), g.v.begin() + at, g.v.begin() + at + elems_);
  }
  return out;
}

bool Harness::SameContent(const std::vector<float>& a,
                          const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), Same);
}

void Harness::RecordVersions(Seq& s, int layer) {
  const Layer& l = s.layers[static_cast<size_t>(layer)];
  const int64_t bt = c_.block_tokens;
  for (int64_t b = 0; (b + 1) * bt <= static_cast<int64_t>(l.pos.size()); ++b) {
    bool whole = true, special = false;
    std::vector<float> content;
    for (int64_t p = b * bt; p < (b + 1) * bt && whole; ++p) {
      const Pos& at = l.pos[static_cast<size_t>(p)];
      whole = at.visible;
      special = special || at.lossy || at.foreign;
      content.insert(content.end(), at.k.begin(), at.k.end());
      content.insert(content.end(), at.v.begin(), at.v.end());
    }
    if (!whole || !special) continue;
    std::vector<std::vector<float>>& known =
        versions_[{BlockKey(s, b * bt), layer}];
    if (std::none_of(known.begin(), known.end(),
                     [&](const std::vector<float>& v) {
                       return SameContent(v, content);
                     })) {
      known.push_back(std::move(content));
    }
  }
}

std::string Harness::Where(SeqId id, int layer, int64_t p) {
  return absl::StrFormat("seq %d layer %d position %d", id, layer, p);
}

}  // namespace kvpage::fuzz
