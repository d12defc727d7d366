// kvpage-dump: inspect and verify a kvpage snapshot (KVCache::WriteSnapshot).
// Read-only: it opens snapshots for reading and writes only to stdout,
// stderr and the SVG file `map` is asked for.
//
// Exit codes: 0 ok, 1 a check failed (verify found a violation), 2 bad usage
// (an unknown --seq or --layer included), an unreadable snapshot, or output
// that could not be written.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "kvpage/snapshot.h"
#include "tools/dump/dump.h"
#include "tools/flag_ranges.h"

namespace {

constexpr int kOk = 0, kCheckFailed = 1, kBadInput = 2;

// The parsed snapshot, or a message on stderr and kBadInput.
bool Load(const std::string& path, kvpage::Snapshot& out) {
  absl::StatusOr<kvpage::Snapshot> snap = kvpage::ReadSnapshot(path);
  if (!snap.ok()) {
    std::cerr << "kvpage-dump: " << snap.status().message() << "\n";
    return false;
  }
  out = *std::move(snap);
  return true;
}

void Print(const kvpage::dump::Json& model, bool json,
           const std::string& text) {
  if (json) {
    std::cout << model.dump(2) << "\n";
  } else {
    std::cout << text;
  }
}

// `code`, unless what was printed did not all reach standard output (a full
// disk, an I/O error): then one line on stderr and kBadInput, so that a
// script never takes a lost output for an empty one.
int Finish(int code) {
  std::cout.flush();
  if (std::cout) return code;
  const int error = errno != 0 ? errno : EIO;
  std::cerr << "kvpage-dump: writing standard output: " << std::strerror(error)
            << "\n";
  return kBadInput;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kvpage-dump: inspect and verify a kvpage snapshot.\n"
      "Exit codes: 0 ok, 1 a check failed, 2 bad usage, an unreadable file "
      "or output that could not be written."};
  app.require_subcommand(1);
  bool json = false;
  std::string file, file_b, svg;
  uint64_t seq = 0;
  int layer = 0;
  // A verb reading one snapshot (`diff` names its two itself).
  auto add = [&](const char* name, const char* help, bool one_file = true) {
    CLI::App* sub = app.add_subcommand(name, help);
    sub->add_flag("--json", json,
                  "JSON output (stable snake_case keys, schema_version)");
    if (one_file) sub->add_option("FILE", file, "snapshot")->required();
    return sub;
  };
  CLI::App* summary =
      add("summary",
          "Config, pool usage, internal waste, policy and compression "
          "figures, stats");
  CLI::App* tables = add("tables",
                         "Block tables: logical block, block id, pool and "
                         "format, reference count, valid slots, positions");
  // Either names one that exists in FILE, or the verb fails (exit 2): a typo
  // must not look like an empty table.
  CLI::Option* seq_opt =
      tables->add_option("--seq", seq, "only this sequence")
          ->transform(kvpage::tools::UintRange(0, UINT64_MAX));
  CLI::Option* layer_opt =
      tables->add_option("--layer", layer, "only this layer")
          ->transform(kvpage::tools::IntRange(0, 4095));
  CLI::App* blocks = add("blocks",
                         "Each block's state (free, used, shared, cached, "
                         "quantized), reference count and owners");
  CLI::App* verify =
      add("verify",
          "Check the invariants; prints nothing and exits 0 when all hold, "
          "lists each violation and exits 1 otherwise");
  CLI::App* diff = add("diff",
                       "What changed from A to B: blocks allocated, freed, "
                       "compressed; sequences added, removed, grown, shrunk",
                       /*one_file=*/false);
  diff->add_option("A", file, "older snapshot")->required();
  diff->add_option("B", file_b, "newer snapshot")->required();
  CLI::App* map = add("map",
                      "An SVG picture of the pools: one cell per block, "
                      "coloured by state and owner, with a legend");
  map->add_option("--svg", svg, "where to write the SVG")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kBadInput;
  }

  // Unsynchronized with stdio: `tables` and `blocks` write as they walk.
  std::ios::sync_with_stdio(false);
  try {
    kvpage::Snapshot a;
    if (!Load(file, a)) return kBadInput;
    namespace dump = kvpage::dump;
    errno = 0;  // Finish() reports the error of a failed write
    if (summary->parsed()) {
      const dump::Json m = dump::Summary(a);
      Print(m, json, dump::SummaryText(m));
    } else if (tables->parsed()) {
      dump::TableFilter filter;
      if (seq_opt->count() > 0) {
        filter.seq = seq;
        if (std::none_of(a.sequences.begin(), a.sequences.end(),
                         [&](const kvpage::SnapshotSequence& s) {
                           return s.id == seq;
                         })) {
          std::cerr << "kvpage-dump: --seq: no sequence " << seq << " in "
                    << file << "\n";
          return kBadInput;
        }
      }
      if (layer_opt->count() > 0) {
        filter.layer = layer;
        if (layer >= a.config.num_layers) {
          std::cerr << "kvpage-dump: --layer: no layer " << layer << " in "
                    << file << " (it has " << a.config.num_layers
                    << " layers)\n";
          return kBadInput;
        }
      }
      if (json) {
        dump::TablesJson(a, filter, std::cout);
      } else {
        dump::TablesText(a, filter, std::cout);
      }
    } else if (blocks->parsed()) {
      if (json) {
        dump::BlocksJson(a, std::cout);
      } else {
        dump::BlocksText(a, std::cout);
      }
    } else if (verify->parsed()) {
      const dump::Json m = dump::Verify(a);
      Print(m, json, dump::VerifyText(m));
      return Finish(m["ok"].get<bool>() ? kOk : kCheckFailed);
    } else if (diff->parsed()) {
      kvpage::Snapshot b;
      if (!Load(file_b, b)) return kBadInput;
      const dump::Json m = dump::Diff(a, b);
      Print(m, json, dump::DiffText(m));
    } else if (map->parsed()) {
      dump::Json m;
      std::ofstream out(svg, std::ios::binary);
      dump::WriteMapSvg(a, out, &m);
      out.close();
      if (!out) {
        std::cerr << "kvpage-dump: cannot write " << svg << "\n";
        return kBadInput;
      }
      Print(m, json, dump::MapText(m));
    }
  } catch (const std::exception& e) {  // nlohmann or the standard library
    std::cerr << "kvpage-dump: " << e.what() << "\n";
    return kBadInput;
  }
  return Finish(kOk);
}
