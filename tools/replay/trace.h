// tools/replay/trace.h — request traces for kvpage-replay: the JSONL format
// public production traces publish, the token ids a trace's block ids stand
// for, and a synthetic trace generator.
//
// One request a line:
//   {"timestamp": 27482, "input_length": 6955, "output_length": 52,
//    "hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 2353, 2354]}
// hash_ids names each trace block of the prompt (trace_block_tokens tokens,
// the last one possibly partial): equal ids stand for equal content. The
// replay turns id h into the token ids TraceToken(h, 0 .. trace_block_tokens),
// so two prompts share kvpage's blocks exactly where their trace blocks are
// equal; a partial last block is the beginning of its id's tokens. Output
// tokens are the request's own (OutputToken), shared with no other request.
//
// Usage:
//   absl::StatusOr<std::vector<TraceRequest>> trace = ParseTrace(in, 512);
//   std::vector<int32_t> prompt = PromptTokens((*trace)[0], 512);
#ifndef KVPAGE_TOOLS_REPLAY_TRACE_H_
#define KVPAGE_TOOLS_REPLAY_TRACE_H_

#include <cstdint>
#include <istream>
#include <ostream>
#include <vector>

#include "absl/status/statusor.h"

namespace kvpage::replay {

// The longest prompt and output a trace line may give (2^24 tokens).
inline constexpr int64_t kMaxTraceTokens = int64_t{1} << 24;

struct TraceRequest {
  double timestamp = 0;  // arrival, in the trace's unit (ms in public traces)
  int64_t input_length = 0;
  int64_t output_length = 0;
  std::vector<int64_t> hash_ids;  // ceil(input_length / trace_block_tokens)
};

// Reads a JSONL trace: one request a line, blank lines skipped, in the
// order of the file. InvalidArgument naming the line and the field for a
// line that is not such an object: a field missing or of another type, a
// length outside [1, 2^24] (input) or [0, 2^24] (output), a timestamp not
// finite, or hash_ids not holding exactly ceil(input_length /
// trace_block_tokens) integers. Nothing is returned unless every line is
// good. O(bytes).
[[nodiscard]] absl::StatusOr<std::vector<TraceRequest>> ParseTrace(
    std::istream& in, int64_t trace_block_tokens);

// Writes `trace` in the format ParseTrace reads.
void WriteTrace(const std::vector<TraceRequest>& trace, std::ostream& out);

// The token id at index `j` of trace block `hash_id` (in [0, 2^31)).
[[nodiscard]] int32_t TraceToken(int64_t hash_id, int64_t j);
// The token id of output position `j` of the request at `request_index`.
[[nodiscard]] int32_t OutputToken(int64_t request_index, int64_t j);
// The prompt's token ids: input_length of them.
[[nodiscard]] std::vector<int32_t> PromptTokens(const TraceRequest& request,
                                                int64_t trace_block_tokens);

// A synthetic trace with the shapes that make prefix caching pay: a few
// system prompts shared by many conversations, and conversations whose
// every turn's prompt extends the previous turn's (prompt, answer and a new
// user message). Deterministic for a seed.
struct SyntheticTraceOptions {
  int64_t requests = 400;
  int64_t trace_block_tokens = 512;
  int system_prompts = 4;
  int64_t system_prompt_tokens_max = 4 * 512;  // each in [1/4 of it, it]
  int max_turns = 6;                           // turns per conversation
  int64_t user_tokens_max = 1024;              // each in [1/8 of it, it]
  int64_t output_tokens_max = 128;             // each in [1/8 of it, it]
  double shared_system_prompt = 0.8;  // fraction of conversations with one
  double mean_gap_ms = 200;           // between new conversations
  double think_time_ms = 5000;        // mean, between a conversation's turns
  uint64_t seed = 1;
};

// The requests in arrival order (timestamps in ms, non-decreasing).
// InvalidArgument for options out of range (a count or a length below 1, a
// fraction outside [0, 1], a negative time).
[[nodiscard]] absl::StatusOr<std::vector<TraceRequest>> GenerateTrace(
    const SyntheticTraceOptions& options);

}  // namespace kvpage::replay

#endif  // KVPAGE_TOOLS_REPLAY_TRACE_H_
