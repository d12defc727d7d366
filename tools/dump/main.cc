// kvpage-dump: inspect and verify a kvpage snapshot (KVCache::WriteSnapshot).
// Read-only: it opens snapshots for reading and writes only to stdout,
// stderr and the SVG file `map` is asked for.
//
// Exit codes: 0 ok; 1 a check failed (verify found a violation) or the
// sequence or layer that --seq or --layer asks for is not in the snapshot;
// 2 bad usage (one line on stderr naming the flag or the verb), an
// unreadable snapshot, or output that could not be written.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kvpage/snapshot.h"
#include "tools/dump/dump.h"
#include "tools/flag_ranges.h"

namespace kvpage::dump {
namespace {

constexpr int kOk = 0, kCheckFailed = 1, kBadInput = 2;

// What the command line names.
struct Args {
  bool json = false;
  std::string file, file_b, svg;
  uint64_t seq = 0;
  int layer = 0;
  CLI::Option* seq_flag = nullptr;  // given when count() > 0
  CLI::Option* layer_flag = nullptr;
};

struct Verbs {
  CLI::App *summary, *tables, *blocks, *verify, *diff, *map;
};

Verbs DefineVerbs(CLI::App& app, Args& args) {
  // A verb reading one snapshot (`diff` names its two itself).
  auto add = [&](const char* name, const char* help, bool one_file = true) {
    CLI::App* verb = app.add_subcommand(name, help);
    verb->add_flag("--json", args.json,
                   "JSON output (stable snake_case keys, schema_version)");
    if (one_file) verb->add_option("FILE", args.file, "snapshot")->required();
    return verb;
  };
  Verbs verbs;
  verbs.summary = add("summary",
                      "Config, pool usage, internal waste, policy and "
                      "compression figures, stats");
  verbs.tables = add("tables",
                     "Block tables: logical block, block id, pool and "
                     "format, reference count, valid slots, positions");
  // Either names one that exists in FILE, or the verb fails (exit 1): a typo
  // must not look like an empty table.
  args.seq_flag =
      verbs.tables->add_option("--seq", args.seq, "only this sequence")
          ->transform(tools::UintRange(0, UINT64_MAX));
  args.layer_flag =
      verbs.tables->add_option("--layer", args.layer, "only this layer")
          ->transform(tools::IntRange(0, 4095));
  verbs.blocks = add("blocks",
                     "Each block's state (free, used, shared, cached, "
                     "quantized), reference count and owners");
  verbs.verify =
      add("verify",
          "Check the invariants; prints nothing and exits 0 when all hold, "
          "lists each violation and exits 1 otherwise");
  verbs.diff = add("diff",
                   "What changed from A to B: blocks allocated, freed, "
                   "compressed; sequences added, removed, grown, shrunk",
                   /*one_file=*/false);
  verbs.diff->add_option("A", args.file, "older snapshot")->required();
  verbs.diff->add_option("B", args.file_b, "newer snapshot")->required();
  verbs.map = add("map",
                  "An SVG picture of the pools: one cell per block, "
                  "coloured by state and owner, with a legend");
  verbs.map->add_option("--svg", args.svg, "where to write the SVG")
      ->required();
  return verbs;
}

// One line on stderr for a parse error. Without a verb CLI11 would say "A
// subcommand is required" whatever was given: name the word that is not a
// verb instead, and list the verbs.
int ReportUsageError(CLI::App& app, const CLI::ParseError& error, int argc,
                     char** argv) {
  std::string message = error.what();
  if (app.get_subcommands().empty()) {
    std::vector<std::string> verbs;
    for (const CLI::App* verb : app.get_subcommands({})) {
      verbs.push_back(verb->get_name());
    }
    const std::string list = absl::StrJoin(verbs, ", ");
    message = "a verb is required: " + list;
    for (int i = 1; i < argc; ++i) {
      if (argv[i][0] != '-') {
        message =
            absl::StrCat("'", argv[i], "' is not a verb; the verbs are ", list);
        break;
      }
    }
  }
  std::cerr << "kvpage-dump: " << message << " (see --help)\n";
  return kBadInput;
}

// The parsed snapshot, or a message on stderr and false.
bool Load(const std::string& path, Snapshot& out) {
  absl::StatusOr<Snapshot> snap = ReadSnapshot(path);
  if (!snap.ok()) {
    std::cerr << "kvpage-dump: " << snap.status().message() << "\n";
    return false;
  }
  out = *std::move(snap);
  return true;
}

void Print(const Json& model, bool json, const std::string& text) {
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

// `tables`: the filter --seq and --layer ask for, each of which must name
// one in the snapshot (kCheckFailed otherwise, said on stderr).
int Tables(const Snapshot& snap, const Args& args) {
  TableFilter filter;
  if (args.seq_flag->count() > 0) {
    filter.seq = args.seq;
    if (std::none_of(
            snap.sequences.begin(), snap.sequences.end(),
            [&](const SnapshotSequence& seq) { return seq.id == args.seq; })) {
      std::cerr << "kvpage-dump: --seq: no sequence " << args.seq << " in "
                << args.file << "\n";
      return kCheckFailed;
    }
  }
  if (args.layer_flag->count() > 0) {
    filter.layer = args.layer;
    if (args.layer >= snap.config.num_layers) {
      std::cerr << "kvpage-dump: --layer: no layer " << args.layer << " in "
                << args.file << " (it has " << snap.config.num_layers
                << " layers)\n";
      return kCheckFailed;
    }
  }
  if (args.json) {
    TablesJson(snap, filter, std::cout);
  } else {
    TablesText(snap, filter, std::cout);
  }
  return Finish(kOk);
}

int Map(const Snapshot& snap, const Args& args) {
  Json model;
  std::ofstream out(args.svg, std::ios::binary);
  WriteMapSvg(snap, out, &model);
  out.close();
  if (!out) {
    std::cerr << "kvpage-dump: cannot write " << args.svg << "\n";
    return kBadInput;
  }
  Print(model, args.json, MapText(model));
  return Finish(kOk);
}

// Runs the verb that was parsed on the snapshot(s) it names.
int Run(const Verbs& verbs, const Args& args) {
  Snapshot snap;
  if (!Load(args.file, snap)) return kBadInput;
  errno = 0;  // Finish() reports the error of a failed write
  if (verbs.summary->parsed()) {
    const Json model = Summary(snap);
    Print(model, args.json, SummaryText(model));
  } else if (verbs.tables->parsed()) {
    return Tables(snap, args);
  } else if (verbs.blocks->parsed()) {
    if (args.json) {
      BlocksJson(snap, std::cout);
    } else {
      BlocksText(snap, std::cout);
    }
  } else if (verbs.verify->parsed()) {
    const Json model = Verify(snap);
    Print(model, args.json, VerifyText(model));
    return Finish(model["ok"].get<bool>() ? kOk : kCheckFailed);
  } else if (verbs.diff->parsed()) {
    Snapshot newer;
    if (!Load(args.file_b, newer)) return kBadInput;
    const Json model = Diff(snap, newer);
    Print(model, args.json, DiffText(model));
  } else if (verbs.map->parsed()) {
    return Map(snap, args);
  }
  return Finish(kOk);
}

}  // namespace
}  // namespace kvpage::dump

int main(int argc, char** argv) {
  namespace dump = kvpage::dump;
  CLI::App app{
      "kvpage-dump: inspect and verify a kvpage snapshot.\n"
      "Exit codes: 0 ok, 1 a check failed or the --seq or --layer asked for "
      "is not in the snapshot, 2 bad usage, an unreadable file or output "
      "that could not be written."};
  app.require_subcommand(1);
  dump::Args args;
  const dump::Verbs verbs = dump::DefineVerbs(app, args);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    return dump::ReportUsageError(app, e, argc, argv);
  }
  // Unsynchronized with stdio: `tables` and `blocks` write as they walk.
  std::ios::sync_with_stdio(false);
  try {
    return dump::Run(verbs, args);
  } catch (const std::exception& e) {  // nlohmann or the standard library
    std::cerr << "kvpage-dump: " << e.what() << "\n";
    return dump::kBadInput;
  }
}
