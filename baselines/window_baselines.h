// baselines/window_baselines.h — what people write by hand for a sliding-window
// KV cache with attention sinks: the baselines of kvpage's kSlidingWindow and
// kCircularBuffer policies. Both keep, per layer, one contiguous buffer of
// `window` token slots for keys and one for values, with the same visible
// tokens as kvpage: the first `sinks` positions forever, then the most recent
// window - sinks positions. They differ in where a token goes once full.
//
// ShiftWindow models the naive sliding-window cache: the buffer stays in
// position order, so every append past the window memmoves the non-sink part
// down by one token and writes the new token in the last slot (what
// `k = cat(k[:, :sinks], k[:, sinks + 1:], k_new)` does, minus the
// allocation). O(window) bytes moved per token; attention reads one piece.
//
// TokenRing models the hand-written optimum: the non-sink part is a ring of
// token slots written at a rotating index, sinks kept at the front. O(1) per
// token, but attention reads the window in two pieces (from the oldest slot
// to the end of the buffer, then from the first ring slot to the newest).
//
// Both take n tokens per call with the result of n one-token appends, writing
// only the tokens that stay visible (a prefill longer than the window writes
// its last window - sinks tokens), so their state after any history is
// reached in O(window) per call. Elements are f16 bit patterns, laid out
// [tokens][num_kv_heads][head_dim] as kvpage's inputs. For the benchmarks;
// thread-compatible.
#ifndef KVPAGE_BASELINES_WINDOW_BASELINES_H_
#define KVPAGE_BASELINES_WINDOW_BASELINES_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/types/span.h"

namespace kvpage::baselines {

// What both baselines share: the buffers and the bookkeeping of visible
// tokens. Invariant per layer: k.size() == v.size() == window * token_elems.
class WindowBuffers {
 public:
  // `token_elems` is num_kv_heads * head_dim; requires 0 <= sinks < window.
  WindowBuffers(int num_layers, int64_t token_elems, int64_t window,
                int64_t sinks)
      : token_elems_(token_elems),
        window_(window),
        sinks_(sinks),
        layers_(static_cast<size_t>(num_layers)) {
    for (Layer& l : layers_) {
      l.k.assign(static_cast<size_t>(window * token_elems), 0);
      l.v.assign(static_cast<size_t>(window * token_elems), 0);
    }
  }

  // Tokens appended to `layer` since the last Clear().
  int64_t written(int layer) const { return at(layer).written; }
  // Visible tokens of `layer`: min(written, window).
  int64_t visible(int layer) const {
    return std::min(at(layer).written, window_);
  }
  // Forgets every token (the storage stays).
  void Clear() {
    for (Layer& l : layers_) l.written = l.next = 0;
  }

 protected:
  struct Layer {
    std::vector<uint16_t> k, v;
    int64_t written = 0;
    int64_t next = 0;  // TokenRing: the slot of the next token
  };

  Layer& at(int layer) { return layers_[static_cast<size_t>(layer)]; }
  const Layer& at(int layer) const {
    return layers_[static_cast<size_t>(layer)];
  }
  // Copies `tokens` tokens from `k` and `v` into slots [slot, slot + tokens)
  // of layer `l`.
  void Put(Layer& l, int64_t slot, const uint16_t* k, const uint16_t* v,
           int64_t tokens) const {
    if (tokens == 0) return;
    const size_t bytes = static_cast<size_t>(tokens * token_elems_) * 2;
    std::memcpy(l.k.data() + slot * token_elems_, k, bytes);
    std::memcpy(l.v.data() + slot * token_elems_, v, bytes);
  }

  int64_t token_elems_, window_, sinks_;
  std::vector<Layer> layers_;
};

class ShiftWindow : public WindowBuffers {
 public:
  using WindowBuffers::WindowBuffers;

  // Appends the n tokens of `k` and `v` (n * token_elems elements each) to
  // `layer`. One token on a full layer memmoves window - sinks - 1 tokens
  // of keys and as many of values.
  void Append(int layer, absl::Span<const uint16_t> k,
              absl::Span<const uint16_t> v) {
    Layer& l = at(layer);
    int64_t n = static_cast<int64_t>(k.size()) / token_elems_;
    const uint16_t* ks = k.data();
    const uint16_t* vs = v.data();
    l.written += n;
    // Free slots first (the sinks among them), in position order.
    const int64_t held = std::min(l.written - n, window_);
    const int64_t room = std::min(n, window_ - held);
    Put(l, held, ks, vs, room);
    ks += room * token_elems_;
    vs += room * token_elems_;
    n -= room;
    if (n == 0) return;
    // Full: the non-sink part slides down by n tokens, the new ones go last.
    const int64_t span = window_ - sinks_;
    if (n < span) {
      const size_t kept = static_cast<size_t>((span - n) * token_elems_) * 2;
      uint16_t* k0 = l.k.data() + sinks_ * token_elems_;
      uint16_t* v0 = l.v.data() + sinks_ * token_elems_;
      std::memmove(k0, k0 + n * token_elems_, kept);
      std::memmove(v0, v0 + n * token_elems_, kept);
      Put(l, window_ - n, ks, vs, n);
    } else {
      const int64_t skip = n - span;
      Put(l, sinks_, ks + skip * token_elems_, vs + skip * token_elems_, span);
    }
  }

  // Keys of the i-th visible token of `layer`, oldest first
  // (0 <= i < visible(layer)): one contiguous piece.
  const uint16_t* key(int layer, int64_t i) const {
    return at(layer).k.data() + i * token_elems_;
  }
};

class TokenRing : public WindowBuffers {
 public:
  using WindowBuffers::WindowBuffers;

  // Appends the n tokens of `k` and `v` (n * token_elems elements each) to
  // `layer`. One token is one copy into the slot at the rotating index.
  void Append(int layer, absl::Span<const uint16_t> k,
              absl::Span<const uint16_t> v) {
    Layer& l = at(layer);
    int64_t n = static_cast<int64_t>(k.size()) / token_elems_;
    const uint16_t* ks = k.data();
    const uint16_t* vs = v.data();
    const int64_t span = window_ - sinks_;
    // Until the buffer is full, a token's slot is its position.
    if (l.written < window_) {
      const int64_t room = std::min(n, window_ - l.written);
      Put(l, l.written, ks, vs, room);
      ks += room * token_elems_;
      vs += room * token_elems_;
      n -= room;
      l.written += room;
      l.next = l.written == window_ ? sinks_ : l.written;
    }
    if (n == 0) return;
    // Full: the ring. Of more than `span` tokens only the last `span` stay.
    l.written += n;
    if (n > span) {
      const int64_t skip = n - span;
      ks += skip * token_elems_;
      vs += skip * token_elems_;
      l.next = sinks_ + (l.next - sinks_ + skip) % span;
      n = span;
    }
    const int64_t first = std::min(n, window_ - l.next);  // up to the end
    Put(l, l.next, ks, vs, first);
    l.next += first;
    if (first < n) {  // then wrap to the first ring slot
      Put(l, sinks_, ks + first * token_elems_, vs + first * token_elems_,
          n - first);
      l.next = sinks_ + (n - first);
    }
    if (l.next == window_) l.next = sinks_;
  }

  // Keys of the i-th visible token of `layer`, oldest first
  // (0 <= i < visible(layer)): the sinks, then the ring from its oldest slot
  // (l.next once full) to the end of the buffer, then from slot `sinks` on.
  const uint16_t* key(int layer, int64_t i) const {
    const Layer& l = at(layer);
    int64_t slot = i;
    if (l.written > window_ && i >= sinks_) {
      slot = sinks_ + (l.next - sinks_ + (i - sinks_)) % (window_ - sinks_);
    }
    return l.k.data() + slot * token_elems_;
  }
};

}  // namespace kvpage::baselines

#endif  // KVPAGE_BASELINES_WINDOW_BASELINES_H_
