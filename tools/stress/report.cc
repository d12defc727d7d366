#include "tools/stress/report.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvpage::stress {

void LatencyRecorder::Merge(const LatencyRecorder& other) {
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  long_.insert(long_.end(), other.long_.begin(), other.long_.end());
  count_ += other.count_;
  sum_ += other.sum_;
}

int64_t LatencyRecorder::Percentile(double q) const {
  if (count_ == 0) return 0;
  // Nearest rank: the smallest sample with at least ceil(q * count) samples
  // at or below it.
  const auto rank = std::max<int64_t>(
      1, static_cast<int64_t>(std::ceil(q * static_cast<double>(count_))));
  int64_t seen = 0;
  for (size_t ns = 0; ns < counts_.size(); ++ns) {
    seen += counts_[ns];
    if (seen >= rank) return static_cast<int64_t>(ns);
  }
  std::vector<int64_t> sorted = long_;
  std::sort(sorted.begin(), sorted.end());
  return sorted[static_cast<size_t>(rank - seen - 1)];
}

WorkloadCounts& WorkloadCounts::operator+=(const WorkloadCounts& shard) {
  complete &= shard.complete;
  requests_completed += shard.requests_completed;
  requests_cut += shard.requests_cut;
  max_requests_in_flight += shard.max_requests_in_flight;
  tokens_appended += shard.tokens_appended;
  prompt_tokens_computed += shard.prompt_tokens_computed;
  prefix_tokens_reused += shard.prefix_tokens_reused;
  decode_tokens += shard.decode_tokens;
  draft_tokens_rejected += shard.draft_tokens_rejected;
  decode_steps += shard.decode_steps;
  scheduler_steps += shard.scheduler_steps;
  return *this;
}

RemoteTierCounters& RemoteTierCounters::operator+=(
    const RemoteTierCounters& shard) {
  shards += shard.shards;
  blocks_written_back += shard.blocks_written_back;
  blocks_written_through += shard.blocks_written_through;
  queue_drops += shard.queue_drops;
  write_errors += shard.write_errors;
  fetch_calls += shard.fetch_calls;
  blocks_fetched += shard.blocks_fetched;
  fetch_misses += shard.fetch_misses;
  fetch_errors += shard.fetch_errors;
  corrupt_blocks += shard.corrupt_blocks;
  foreign_blocks += shard.foreign_blocks;
  bytes_written += shard.bytes_written;
  bytes_fetched += shard.bytes_fetched;
  fetch_p50_us_by_shard.insert(fetch_p50_us_by_shard.end(),
                               shard.fetch_p50_us_by_shard.begin(),
                               shard.fetch_p50_us_by_shard.end());
  fetch_p99_us_by_shard.insert(fetch_p99_us_by_shard.end(),
                               shard.fetch_p99_us_by_shard.begin(),
                               shard.fetch_p99_us_by_shard.end());
  fetch_p50_us_max = std::max(fetch_p50_us_max, shard.fetch_p50_us_max);
  fetch_p99_us_max = std::max(fetch_p99_us_max, shard.fetch_p99_us_max);
  tokens_from_tier += shard.tokens_from_tier;
  blocks_corrupted_by_test += shard.blocks_corrupted_by_test;
  return *this;
}

BackendCounters& BackendCounters::operator+=(const BackendCounters& shard) {
  bytes_written += shard.bytes_written;
  bytes_copied += shard.bytes_copied;
  evictions += shard.evictions;
  prefix_hits += shard.prefix_hits;
  prefix_misses += shard.prefix_misses;
  prefix_tokens_queried += shard.prefix_tokens_queried;
  prefix_tokens_matched += shard.prefix_tokens_matched;
  compressions += shard.compressions;
  compressions_skipped += shard.compressions_skipped;
  decompressions += shard.decompressions;
  max_quant_error = std::max(max_quant_error, shard.max_quant_error);
  tokens_verified += shard.tokens_verified;
  quantized_blocks_verified += shard.quantized_blocks_verified;
  validations += shard.validations;
  remote_tier += shard.remote_tier;
  return *this;
}

LatencySummary Summarize(std::string name, const LatencyRecorder& r) {
  return {.name = std::move(name),
          .count = r.count(),
          .mean_ns = r.mean(),
          .p50_ns = r.Percentile(0.5),
          .p99_ns = r.Percentile(0.99),
          .p999_ns = r.Percentile(0.999),
          .max_ns = r.Percentile(1.0)};
}

CpuCost CpuCostOf(const BackendResult& result, bool rerun) {
  return {.backend = result.backend,
          .rerun = rerun,
          .max_requests_in_flight = result.max_requests_in_flight,
          .scheduler_steps = result.scheduler_steps,
          .tokens_appended = result.tokens_appended,
          .decode_steps = result.decode_steps,
          .wall_s = result.wall_s,
          .cache_s = result.cache_s,
          .cache_ns_per_token = result.cache_ns_per_token,
          .decode_update_ns_per_step = result.decode_update_ns_per_step};
}

namespace {

std::string Bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(b) >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", b)
                : absl::StrFormat("%.2f %s", b, units[u]);
}

std::string Si(double x) {
  const char* units[] = {"", "k", "M", "G", "T"};
  int u = 0;
  while (std::fabs(x) >= 1000 && u < 4) {
    x /= 1000;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f", x)
                : absl::StrFormat("%.2f%s", x, units[u]);
}

std::string Ns(double ns) {
  if (ns < 1e3) return absl::StrFormat("%.0fns", ns);
  if (ns < 1e6) return absl::StrFormat("%.1fus", ns / 1e3);
  if (ns < 1e9) return absl::StrFormat("%.1fms", ns / 1e6);
  return absl::StrFormat("%.2fs", ns / 1e9);
}

std::string Pct(double x) { return absl::StrFormat("%.1f%%", 100 * x); }

// Rows of right-aligned cells under column headers: one column per backend
// (Row), or any columns (Cells).
class Table {
 public:
  explicit Table(const std::vector<BackendResult>& backends)
      : backends_(&backends) {
    for (const BackendResult& b : backends) headers_.push_back(b.backend);
  }
  explicit Table(std::vector<std::string> headers)
      : headers_(std::move(headers)) {}

  // A cell per backend: cell(result).
  template <typename F>
  void Row(std::string label, F cell) {
    std::vector<std::string> cells;
    for (const BackendResult& b : *backends_) cells.push_back(cell(b));
    Cells(std::move(label), std::move(cells));
  }
  void Cells(std::string label, std::vector<std::string> cells) {
    rows_.emplace_back(std::move(label), std::move(cells));
  }
  void Section(std::string title) {
    rows_.emplace_back(std::move(title), std::vector<std::string>());
  }

  std::string Render() const {
    size_t label_w = 0;
    std::vector<size_t> w(headers_.size(), 0);
    for (size_t i = 0; i < headers_.size(); ++i) w[i] = headers_[i].size();
    for (const auto& [label, cells] : rows_) {
      label_w = std::max(label_w, label.size());
      for (size_t i = 0; i < cells.size(); ++i) {
        w[i] = std::max(w[i], cells[i].size());
      }
    }
    std::string out = std::string(label_w, ' ');
    for (size_t i = 0; i < headers_.size(); ++i) {
      absl::StrAppend(&out, "  ", std::string(w[i] - headers_[i].size(), ' '),
                      headers_[i]);
    }
    out += "\n";
    for (const auto& [label, cells] : rows_) {
      if (cells.empty()) {
        absl::StrAppend(&out, label, "\n");
        continue;
      }
      absl::StrAppend(&out, label, std::string(label_w - label.size(), ' '));
      for (size_t i = 0; i < cells.size(); ++i) {
        absl::StrAppend(&out, "  ", std::string(w[i] - cells[i].size(), ' '),
                        cells[i]);
      }
      // An empty last cell leaves no trailing blanks.
      out.erase(out.find_last_not_of(' ') + 1);
      out += "\n";
    }
    return out;
  }

 private:
  const std::vector<BackendResult>* backends_ = nullptr;  // Row's columns
  std::vector<std::string> headers_;
  std::vector<std::pair<std::string, std::vector<std::string>>> rows_;
};

const LatencySummary* Find(const BackendResult& b, std::string_view name) {
  for (const LatencySummary& l : b.latencies) {
    if (l.name == name) return &l;
  }
  return nullptr;
}

// The run's options and workload, four lines.
std::string RunHeader(const RunInfo& r) {
  // Never more in flight than there are requests.
  const int64_t in_flight = std::min(r.concurrency, r.requests);
  return absl::StrFormat(
             "kvpage-stress: %s workload, seed %d\n"
             "  %d requests: mean prompt %.1f, mean output %.1f tokens, "
             "longest "
             "%d; %s; %d worker thread%s\n"
             "  model %s: %d layers x %d kv-heads x head_dim %d, %s, %s per "
             "token; "
             "blocks of %d tokens; KV budget %s\n"
             "  samples %d, shared prefix %s, speculative %s, policy %s "
             "(max_seq_len %d, sinks %d), compression %s\n",
             r.preset, r.seed, r.requests, r.mean_prompt_tokens,
             r.mean_output_tokens, r.longest_request_tokens,
             r.arrival_rate > 0
                 ? absl::StrFormat(
                       "Poisson arrivals, %.3g per step, at most %d in "
                       "flight",
                       r.arrival_rate, in_flight)
                 : absl::StrFormat("%d kept in flight", in_flight),
             r.threads, r.threads == 1 ? "" : "s", r.model, r.layers,
             r.kv_heads, r.head_dim, r.dtype,
             Bytes(static_cast<double>(r.bytes_per_token)), r.block_tokens,
             Bytes(static_cast<double>(r.kv_budget_bytes)), r.samples,
             r.shared_prefix_fraction > 0
                 ? absl::StrFormat(
                       "%.0f%% of requests x %d tokens%s",
                       100 * r.shared_prefix_fraction, r.shared_prefix_tokens,
                       r.shared_prefixes > 1
                           ? absl::StrFormat(" (%d prompts)", r.shared_prefixes)
                           : std::string())
                 : std::string("off"),
             r.spec_tokens > 0
                 ? absl::StrFormat("%d draft tokens, %.0f%% accepted",
                                   r.spec_tokens, 100 * r.spec_accept)
                 : std::string("off"),
             r.policy, r.max_seq_len, r.sink_tokens, r.compress) +
         (r.remote.empty()
              ? std::string("\n")
              : absl::StrFormat(
                    "  remote tier %s, one per paged shard, %s, fetch "
                    "timeout %s, model id %s\n\n",
                    r.remote,
                    r.remote_write_through ? "write-through" : "write-back",
                    r.remote_fetch_timeout_ms > 0
                        ? absl::StrCat(r.remote_fetch_timeout_ms, " ms")
                        : std::string("50 ms (the default)"),
                    r.remote_model_id));
}

// Whether any backend's result satisfies `pred`.
template <typename Pred>
bool Any(const std::vector<BackendResult>& backends, Pred pred) {
  return std::any_of(backends.begin(), backends.end(), pred);
}

void AddWorkloadRows(const std::vector<BackendResult>& bs, Table& t) {
  t.Section("workload");
  t.Row("part of the workload run", [](const BackendResult& b) {
    return b.complete ? std::string("all")
                      : absl::StrFormat("first %.1f s", b.wall_s);
  });
  t.Row("requests completed", [](const BackendResult& b) {
    return b.requests_cut > 0
               ? absl::StrFormat("%d (+%d cut)", b.requests_completed,
                                 b.requests_cut)
               : absl::StrCat(b.requests_completed);
  });
  t.Row("most requests in flight", [](const BackendResult& b) {
    return absl::StrCat(b.max_requests_in_flight);
  });
  t.Row("tokens appended (all layers)",
        [](const BackendResult& b) { return Si(b.tokens_appended); });
  t.Row("decode steps (a sequence, all layers)",
        [](const BackendResult& b) { return Si(b.decode_steps); });
  if (Any(bs,
          [](const BackendResult& b) { return b.prefix_tokens_reused > 0; })) {
    t.Row("prompt tokens reused from the prefix cache",
          [](const BackendResult& b) { return Si(b.prefix_tokens_reused); });
  }
  if (Any(bs,
          [](const BackendResult& b) { return b.draft_tokens_rejected > 0; })) {
    t.Row("draft tokens rolled back",
          [](const BackendResult& b) { return Si(b.draft_tokens_rejected); });
  }
}

void AddThroughputRows(Table& t) {
  t.Section("throughput");
  t.Row("wall time", [](const BackendResult& b) {
    return absl::StrFormat("%.2f s", b.wall_s);
  });
  t.Row("time inside cache calls (all threads)", [](const BackendResult& b) {
    return absl::StrFormat("%.2f s", b.cache_s);
  });
  t.Row("tokens appended / s of cache time",
        [](const BackendResult& b) { return Si(b.tokens_per_s_cache); });
  t.Row("tokens appended / s of wall time",
        [](const BackendResult& b) { return Si(b.tokens_per_s_wall); });
  t.Row("decode steps / s of wall time",
        [](const BackendResult& b) { return Si(b.decode_steps_per_s); });
}

// The calls any backend made, p50 / p99 / p99.9.
void AddLatencyRows(const std::vector<BackendResult>& bs, Table& t) {
  t.Section("latency, p50 / p99 / p99.9");
  const std::pair<const char*, const char*> kLatencies[] = {
      {"update_decode", "update, decode (1 token, 1 layer)"},
      {"update_prefill", "update, prefill chunk (1 layer)"},
      {"update_draft", "update, draft tokens (1 layer)"},
      {"truncate", "rollback of rejected drafts"},
      {"fork", "fork"},
      {"match_prefix", "prefix match"},
      {"release", "release of a sequence"},
      {"compress", "compression (1 layer)"}};
  for (const auto& entry : kLatencies) {
    // Named copies: clang 14 cannot capture a structured binding.
    const char* name = entry.first;
    const char* label = entry.second;
    if (!Any(bs, [&](const BackendResult& b) {
          const LatencySummary* l = Find(b, name);
          return l != nullptr && l->count > 0;
        })) {
      continue;
    }
    t.Row(label, [&](const BackendResult& b) {
      const LatencySummary* l = Find(b, name);
      if (l == nullptr || l->count == 0) return std::string("-");
      return absl::StrCat(Ns(l->p50_ns), " / ", Ns(l->p99_ns), " / ",
                          Ns(l->p999_ns));
    });
  }
}

void AddMemoryRows(const std::vector<BackendResult>& bs, Table& t) {
  t.Section("memory");
  t.Row("KV memory held, peak", [](const BackendResult& b) {
    return Bytes(static_cast<double>(b.kv_bytes_held_peak));
  });
  t.Row("budget used, mean / peak", [](const BackendResult& b) {
    return absl::StrCat(Pct(b.utilization_mean), " / ",
                        Pct(b.utilization_peak));
  });
  t.Row("internal waste, mean / max", [](const BackendResult& b) {
    return absl::StrCat(Pct(b.internal_waste_mean), " / ",
                        Pct(b.internal_waste_max));
  });
  t.Row("peak resident memory (process)", [](const BackendResult& b) {
    return Bytes(static_cast<double>(b.peak_rss_bytes));
  });
  t.Row("bytes written", [](const BackendResult& b) {
    return Bytes(static_cast<double>(b.bytes_written));
  });
  t.Row("bytes copied", [](const BackendResult& b) {
    return Bytes(static_cast<double>(b.bytes_copied));
  });
  t.Row("tokens evicted by the policy",
        [](const BackendResult& b) { return Si(b.evictions); });
  if (Any(bs, [](const BackendResult& b) {
        return b.prefix_hits + b.prefix_misses > 0;
      })) {
    t.Row("prefix cache hits / misses (blocks)", [](const BackendResult& b) {
      return absl::StrCat(Si(b.prefix_hits), " / ", Si(b.prefix_misses));
    });
    t.Row("prefix cache hit rate (tokens)", [](const BackendResult& b) {
      return b.prefix_tokens_queried == 0
                 ? std::string("-")
                 : absl::StrFormat(
                       "%.1f%%",
                       100.0 * static_cast<double>(b.prefix_tokens_matched) /
                           static_cast<double>(b.prefix_tokens_queried));
    });
  }
  if (Any(bs, [](const BackendResult& b) { return b.compressions > 0; })) {
    t.Row("blocks compressed (skipped)", [](const BackendResult& b) {
      return absl::StrCat(Si(b.compressions), " (", Si(b.compressions_skipped),
                          ")");
    });
    t.Row("bytes saved by compression, peak", [](const BackendResult& b) {
      return Bytes(static_cast<double>(b.bytes_saved_peak));
    });
    t.Row("worst block error (relative MSE)", [](const BackendResult& b) {
      return absl::StrFormat("%.2g", b.max_quant_error);
    });
  }
}

// The paged shards' Redis tiers (--remote), summed over shards.
void AddRemoteTierRows(const std::vector<BackendResult>& bs, Table& t) {
  if (!Any(bs,
           [](const BackendResult& b) { return b.remote_tier.shards > 0; })) {
    return;
  }
  t.Section("remote tier (summed over shards)");
  auto row = [&t](std::string label, auto cell) {
    t.Row(std::move(label), [cell](const BackendResult& b) {
      return b.remote_tier.shards == 0 ? std::string("-") : cell(b.remote_tier);
    });
  };
  using R = RemoteTierCounters;
  row("blocks written back / through", [](const R& r) {
    return absl::StrCat(Si(r.blocks_written_back), " / ",
                        Si(r.blocks_written_through));
  });
  row("blocks dropped (queue full) / write errors", [](const R& r) {
    return absl::StrCat(Si(r.queue_drops), " / ", Si(r.write_errors));
  });
  row("fetch calls / blocks fetched", [](const R& r) {
    return absl::StrCat(Si(r.fetch_calls), " / ", Si(r.blocks_fetched));
  });
  row("fetches ended: miss / error / corrupt / foreign", [](const R& r) {
    return absl::StrCat(Si(r.fetch_misses), " / ", Si(r.fetch_errors), " / ",
                        Si(r.corrupt_blocks), " / ", Si(r.foreign_blocks));
  });
  row("bytes written / fetched", [](const R& r) {
    return absl::StrCat(Bytes(static_cast<double>(r.bytes_written)), " / ",
                        Bytes(static_cast<double>(r.bytes_fetched)));
  });
  row("fetch p50 / p99 (the slowest shard)", [](const R& r) {
    return absl::StrCat(Ns(r.fetch_p50_us_max * 1e3), " / ",
                        Ns(r.fetch_p99_us_max * 1e3));
  });
  row("prompt tokens restored from the tier",
      [](const R& r) { return Si(r.tokens_from_tier); });
}

void AddVerificationRows(const std::vector<BackendResult>& bs, Table& t) {
  t.Section("verification");
  t.Row("tokens read back and compared (x layers)",
        [](const BackendResult& b) { return Si(b.tokens_verified); });
  if (Any(bs, [](const BackendResult& b) {
        return b.quantized_blocks_verified > 0;
      })) {
    t.Row("compressed blocks within the bound", [](const BackendResult& b) {
      return Si(b.quantized_blocks_verified);
    });
  }
  t.Row("invariant walks passed",
        [](const BackendResult& b) { return Si(b.validations); });
  t.Row("result", [](const BackendResult& b) { return b.status; });
}

// Memory over time: ten points per backend; then a note for each backend
// that ran part of the workload only.
std::string MemoryOverTimeAndNotes(const std::vector<BackendResult>& bs) {
  std::string out =
      "\nbudget used / internal waste at 10%, 20%, .. 100% of each run\n";
  for (const BackendResult& b : bs) {
    std::string util, waste;
    const size_t n = b.memory_over_time.size();
    for (size_t i = 1; i <= 10 && n > 0; ++i) {
      const MemoryPoint& p = b.memory_over_time[std::min(n, i * n / 10) - 1];
      absl::StrAppend(&util, absl::StrFormat(" %5.1f", 100 * p.utilization));
      absl::StrAppend(&waste,
                      absl::StrFormat(" %5.1f", 100 * p.internal_waste));
    }
    absl::StrAppend(&out,
                    absl::StrFormat("  %-10s used %%  %s\n", b.backend, util),
                    absl::StrFormat("  %-10s waste %% %s\n", "", waste));
  }
  for (const BackendResult& b : bs) {
    if (!b.complete) {
      absl::StrAppend(&out, "\nThe ", b.backend, " backend ran ", b.scope,
                      "; its figures cover that part only (shorter contexts "
                      "than the whole run, which flatters it).\n");
    }
  }
  return out;
}

// The first result of `name`, or null.
const BackendResult* FindBackend(const std::vector<BackendResult>& bs,
                                 std::string_view name) {
  for (const BackendResult& b : bs) {
    if (b.backend == name) return &b;
  }
  return nullptr;
}

const CpuCost* FindCost(const EqualConcurrency& e, std::string_view name) {
  for (const CpuCost& c : e.backends) {
    if (c.backend == name) return &c;
  }
  return nullptr;
}

// "2.06x", or "-" when either side is missing.
std::string Ratio(double paged, double contiguous) {
  if (paged <= 0 || contiguous <= 0) return "-";
  return absl::StrFormat("%.2fx", paged / contiguous);
}

// The three rows of one pass: its most requests in flight, and the time
// inside cache calls per token appended (all calls) and per decode step
// (the step's updates, every layer), paged against contiguous.
void AddCpuRows(const std::vector<const CpuCost*>& costs,
                const std::string& pass, Table& t) {
  const bool pair = costs.size() == 2;
  std::vector<std::string> in_flight;
  for (const CpuCost* c : costs) {
    in_flight.push_back(absl::StrCat(c->max_requests_in_flight));
  }
  if (pair) in_flight.emplace_back();
  t.Cells(absl::StrCat("most requests in flight, ", pass),
          std::move(in_flight));
  const std::pair<const char*, double CpuCost::*> kTimes[] = {
      {"per token appended (all layers, all calls)",
       &CpuCost::cache_ns_per_token},
      {"per decode step (all layers, its updates)",
       &CpuCost::decode_update_ns_per_step}};
  for (const auto& [what, field] : kTimes) {
    std::vector<std::string> cells;
    for (const CpuCost* c : costs) cells.push_back(Ns(c->*field));
    if (pair) cells.push_back(Ratio(costs[0]->*field, costs[1]->*field));
    t.Cells(absl::StrCat(what, ", ", pass), std::move(cells));
  }
}

// The CPU per unit of work of the paged and contiguous backends, at the
// concurrency each one's budget allows and at equal concurrency, with the
// paged / contiguous ratio when both ran; what the equal pass ran. The
// naive backend is left out: it ran the first seconds only, on short
// contexts, and has no budget that holds its batch.
std::string CpuPerToken(const Report& report) {
  std::vector<std::string> headers;
  std::vector<CpuCost> budget;
  for (const char* name : {"paged", "contiguous"}) {
    if (const BackendResult* b = FindBackend(report.backends, name)) {
      headers.emplace_back(name);
      budget.push_back(CpuCostOf(*b, false));
    }
  }
  if (budget.empty()) return "";
  if (budget.size() == 2) headers.emplace_back("paged / contiguous");
  Table t(headers);
  std::vector<const CpuCost*> costs;
  for (const CpuCost& c : budget) costs.push_back(&c);
  AddCpuRows(costs, "at the budget's concurrency", t);
  const EqualConcurrency& equal = report.equal_concurrency;
  std::string note;
  const CpuCost* paged = FindCost(equal, "paged");
  const CpuCost* contiguous = FindCost(equal, "contiguous");
  if (equal.requests_in_flight > 0 && paged != nullptr &&
      contiguous != nullptr && budget.size() == 2) {
    AddCpuRows({paged, contiguous},
               absl::StrFormat("at equal concurrency (%d in flight)",
                               equal.requests_in_flight),
               t);
    std::string shards;
    if (equal.requests_in_flight_by_shard.size() > 1) {
      shards = absl::StrCat(
          " (", absl::StrJoin(equal.requests_in_flight_by_shard, " + "),
          " over the shards)");
    }
    for (const CpuCost* c : {paged, contiguous}) {
      absl::StrAppend(
          &note, "\n", c->backend,
          c->rerun ? absl::StrFormat(
                         " ran the workload again, held to %d requests in "
                         "flight%s.",
                         equal.requests_in_flight, shards)
                   : absl::StrFormat(
                         ": its run at the budget's concurrency, which never "
                         "had more than %d in flight.",
                         c->max_requests_in_flight));
    }
  }
  return absl::StrCat(
      "\nCPU time inside cache calls (all threads), per unit of work\n",
      t.Render(), note.empty() ? "" : "At equal concurrency:", note,
      note.empty() ? "" : "\n");
}

}  // namespace

std::string RenderTable(const Report& report) {
  const std::vector<BackendResult>& bs = report.backends;
  Table t(bs);
  AddWorkloadRows(bs, t);
  AddThroughputRows(t);
  AddLatencyRows(bs, t);
  AddMemoryRows(bs, t);
  AddRemoteTierRows(bs, t);
  AddVerificationRows(bs, t);
  return RunHeader(report.run) + t.Render() + CpuPerToken(report) +
         MemoryOverTimeAndNotes(bs);
}

}  // namespace kvpage::stress
