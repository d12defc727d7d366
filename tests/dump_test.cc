// kvpage-dump: golden tests of every verb's human and JSON output on the
// showcase snapshot, the SVG parsed as XML, and the command line's exit codes.
// KVPAGE_UPDATE_GOLDEN=1 rewrites tests/golden/ from the current output.
#include "tools/dump/dump.h"

#include <expat.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/snapshot.h"
#include "tests/snapshot_fixture.h"

namespace kvpage {
namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void ExpectGolden(const std::string& name, const std::string& actual) {
  const std::string path =
      absl::StrCat(KVPAGE_SOURCE_DIR, "/tests/golden/", name);
  if (std::getenv("KVPAGE_UPDATE_GOLDEN") != nullptr) {
    std::ofstream(path, std::ios::binary) << actual;
    return;
  }
  EXPECT_EQ(actual, ReadFile(path))
      << "golden " << name << " differs; if the change is intended, rerun "
      << "with KVPAGE_UPDATE_GOLDEN=1 and review the diff";
}

Snapshot Showcase() {
  auto cache = testing::BuildShowcase();
  EXPECT_TRUE(cache.ok()) << cache.status();
  return *(*cache)->TakeSnapshot({});
}

TEST(DumpGolden, Summary) {
  const dump::Json m = dump::Summary(Showcase());
  ExpectGolden("summary.txt", dump::SummaryText(m));
  ExpectGolden("summary.json", m.dump(2) + "\n");
}

// Internal waste counts each block once, hot or compressed, however many
// tables share it: a fork adds no block and changes neither figure.
// The public list of statistics fields (kvpage/stats_fields.h) names every
// CacheStats field once, by its own name, and a visitor may assign them.
TEST(StatsFields, EveryFieldOnceByItsName) {
  CacheStats stats;
  int count = 0;
  ForEachStatsField(stats, [&count](const char*, auto& field) {
    field = static_cast<std::remove_reference_t<decltype(field)>>(++count);
  });
  EXPECT_EQ(count, kCacheStatsFieldCount);
  EXPECT_EQ(stats.blocks_total, 1);
  EXPECT_EQ(stats.utilization, 5.0);
  EXPECT_EQ(stats.prefix_tokens_matched, kCacheStatsFieldCount);
  std::set<std::string> names;
  ForEachStatsField(stats, [&names](const char* name, auto) {
    EXPECT_TRUE(names.insert(name).second) << name;
  });
  EXPECT_EQ(names.size(), static_cast<size_t>(kCacheStatsFieldCount));
  EXPECT_TRUE(names.contains("decompressions"));
  EXPECT_EQ(dump::Summary(Snapshot{.stats = stats})["stats"]["hits"],
            stats.hits);
}

TEST(DumpSummary, WasteCountsSharedBlocksOnce) {
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok());
  const dump::Json before = dump::Summary(*(*cache)->TakeSnapshot({}));
  ASSERT_TRUE((*cache)->Fork(5).ok());  // seq 5 holds compressed blocks
  const Snapshot forked = *(*cache)->TakeSnapshot({});
  const dump::Json after = dump::Summary(forked);
  EXPECT_GT(after["compression"]["table_entries_compressed"].get<int64_t>(),
            before["compression"]["table_entries_compressed"].get<int64_t>());
  EXPECT_EQ(after["waste"], before["waste"]);
}

// A cache of layer groups: the showcase's shape with layers 0 and 1 in one
// group and 2 and 3 in another. Each layer lists its group's blocks; the
// dump says it is grouped, counts no dangling reference and verifies clean.
TEST(DumpSummary, LayerGroups) {
  CacheConfig c = testing::ShowcaseConfig();
  c.compression = {};
  c.group_layers = true;
  c.layer_policies = {{.layer = 2,
                       .overflow = OverflowPolicy::kSlidingWindow,
                       .max_seq_len = 36,
                       .sink_tokens = 4},
                      {.layer = 3,
                       .overflow = OverflowPolicy::kSlidingWindow,
                       .max_seq_len = 36,
                       .sink_tokens = 4}};
  auto cache = KVCache::Create(c);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::mt19937_64 rng(7);
  const SeqId a = *(*cache)->AddSequence();
  ASSERT_TRUE(testing::Grow(**cache, a, 50, 10, 1000, rng).ok());
  const SeqId b = *(*cache)->Fork(a);
  ASSERT_TRUE((*cache)->Truncate(b, 45).ok());
  ASSERT_TRUE(testing::Grow(**cache, b, 3, 1, 5000, rng).ok());
  const Snapshot snap = *(*cache)->TakeSnapshot({});
  EXPECT_EQ(snap.sequences[0].layers[0].entries,
            snap.sequences[0].layers[1].entries);
  const dump::Json m = dump::Summary(snap);
  EXPECT_EQ(m["dangling_references"].get<int64_t>(), 0);
  EXPECT_TRUE(m["config"]["group_layers"].get<bool>());
  EXPECT_THAT(dump::SummaryText(m), HasSubstr("one table per group of layers"));
  EXPECT_EQ(dump::VerifyText(dump::Verify(snap)), "");
  // A prefix entry's blocks are one per table: named by group.
  ASSERT_FALSE(snap.prefix.empty());
  std::ostringstream blocks;
  dump::BlocksText(snap, blocks);
  EXPECT_THAT(
      blocks.str(),
      ::testing::Not(::testing::ContainsRegex("prefix [0-9a-f]+ layer")));
  EXPECT_THAT(blocks.str(),
              ::testing::ContainsRegex("prefix [0-9a-f]+ group 0"));
}

// With layer groups a block id holds a slot of every layer of its group:
// internal waste counts them all, each layer's slots showing what that layer
// shows (a layer behind the others leaves more of them empty).
TEST(DumpSummary, WasteCountsEveryLayerOfAGroup) {
  CacheConfig c = testing::ShowcaseConfig();
  c.compression = {};
  c.layer_policies = {};
  c.group_layers = true;  // 4 layers, one group, blocks of 8
  auto cache = KVCache::Create(c);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::mt19937_64 rng(3);
  const SeqId a = *(*cache)->AddSequence();
  ASSERT_TRUE(testing::Grow(**cache, a, 20, 20, -1, rng).ok());
  std::vector<float> kv(2 * 8 * 2, 0.5f);  // layer 0 one token ahead
  const TokenSpan one{.data = kv.data(), .tokens = 1};
  ASSERT_TRUE((*cache)->Update(a, 0, one, one, 21).ok());
  const dump::Json m = dump::Summary(*(*cache)->TakeSnapshot({}));
  // 3 blocks of 8 slots in 4 layers; 21 + 3 x 20 tokens visible.
  EXPECT_EQ(m["waste"]["slots_held"].get<int64_t>(), 3 * 8 * 4);
  EXPECT_EQ(m["waste"]["slots_visible"].get<int64_t>(), 21 + 3 * 20);
}

// The same for compressed blocks of a group: a cell holds a slot of every
// layer of its group, each showing what its layer shows.
TEST(DumpSummary, WasteCountsEveryLayerOfACompressedGroupBlock) {
  CacheConfig c = testing::ShowcaseConfig();  // int8, hot_tokens 16
  c.layer_policies = {};
  c.group_layers = true;  // 4 layers, one group, blocks of 8
  auto cache = KVCache::Create(c);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::mt19937_64 rng(3);
  const SeqId a = *(*cache)->AddSequence();
  ASSERT_TRUE(testing::Grow(**cache, a, 40, 40, -1, rng).ok());
  ASSERT_TRUE((*cache)->CompressOldEntries(a, 0, 0.0).ok());
  std::vector<float> kv(2 * 8 * 2, 0.5f);  // layer 0 one token ahead
  const TokenSpan one{.data = kv.data(), .tokens = 1};
  ASSERT_TRUE((*cache)->Update(a, 0, one, one, 41).ok());
  const Snapshot snap = *(*cache)->TakeSnapshot({});
  const dump::Json m = dump::Summary(snap);
  // Blocks 0 to 2 compressed (cold: 24 <= 40 - 16), listed by 4 layers.
  EXPECT_EQ(m["compression"]["table_entries_compressed"].get<int64_t>(), 3 * 4);
  // 6 blocks of 8 slots in 4 layers; 41 + 3 x 40 tokens visible.
  EXPECT_EQ(m["waste"]["slots_held"].get<int64_t>(), 6 * 8 * 4);
  EXPECT_EQ(m["waste"]["slots_visible"].get<int64_t>(), 41 + 3 * 40);
  EXPECT_EQ(dump::VerifyText(dump::Verify(snap)), "");
}

std::string TablesText(const Snapshot& snap, const dump::TableFilter& f) {
  std::ostringstream out;
  dump::TablesText(snap, f, out);
  return out.str();
}

std::string TablesJson(const Snapshot& snap, const dump::TableFilter& f) {
  std::ostringstream out;
  dump::TablesJson(snap, f, out);
  return out.str();
}

TEST(DumpGolden, Tables) {
  const Snapshot snap = Showcase();
  ExpectGolden("tables.txt", TablesText(snap, {}));
  ExpectGolden("tables.json", TablesJson(snap, {}));
  const dump::Json one =
      dump::Json::parse(TablesJson(snap, {.seq = 5, .layer = 2}));
  ASSERT_EQ(one["sequences"].size(), 1u);
  ASSERT_EQ(one["sequences"][0]["layers"].size(), 1u);
  EXPECT_EQ(one["sequences"][0]["layers"][0]["overflow"], "circular_buffer");
}

// Streamed JSON keeps Json::dump(2)'s layout where the filter leaves no
// sequence or no layer.
TEST(DumpTables, EmptySelections) {
  const Snapshot snap = Showcase();
  dump::Json none;
  none["schema_version"] = dump::kSchemaVersion;
  none["block_tokens"] = snap.config.block_tokens;
  none["sequences"] = dump::Json::array();
  EXPECT_EQ(TablesJson(snap, {.seq = 99}), none.dump(2) + "\n");
  EXPECT_EQ(TablesText(snap, {.seq = 99}), "");
  const dump::Json no_layer =
      dump::Json::parse(TablesJson(snap, {.layer = 99}));
  ASSERT_EQ(no_layer["sequences"].size(), snap.sequences.size());
  EXPECT_EQ(no_layer.dump(2) + "\n", TablesJson(snap, {.layer = 99}));
  EXPECT_TRUE(no_layer["sequences"][0]["layers"].empty());
}

TEST(DumpGolden, Blocks) {
  const Snapshot snap = Showcase();
  std::ostringstream text, json;
  dump::BlocksText(snap, text);
  dump::BlocksJson(snap, json);
  ExpectGolden("blocks.txt", text.str());
  ExpectGolden("blocks.json", json.str());
  const dump::Json m = dump::Json::parse(json.str());
  EXPECT_EQ(m["schema_version"], dump::kSchemaVersion);
  EXPECT_EQ(m["hot"].size(), snap.hot.ref_counts.size());
  EXPECT_EQ(m["quant"].size(), snap.quant.ref_counts.size());
}

// Streamed JSON keeps Json::dump(2)'s layout where a pool or an owner list
// is empty too.
TEST(DumpBlocks, EmptyPoolsAndOwnerLists) {
  Snapshot snap;
  snap.hot.ref_counts = {0, 1};
  std::ostringstream json, text;
  dump::BlocksJson(snap, json);
  dump::BlocksText(snap, text);
  dump::Json m;
  m["schema_version"] = dump::kSchemaVersion;
  m["hot"] = {{{"id", 0},
               {"state", "free"},
               {"ref_count", 0},
               {"owners", dump::Json::array()}},
              {{"id", 1},
               {"state", "used"},
               {"ref_count", 1},
               {"owners", dump::Json::array()}}};
  m["quant"] = dump::Json::array();
  EXPECT_EQ(json.str(), m.dump(2) + "\n");
  EXPECT_EQ(text.str(),
            "hot pool\n"
            "  id  state  refs  owners\n"
            "  0   free   0     -\n"
            "  1   used   1     -\n");
}

TEST(DumpGolden, VerifyListsEachViolation) {
  Snapshot snap = Showcase();
  EXPECT_EQ(dump::VerifyText(dump::Verify(snap)), "");
  snap.hot.ref_counts[0] += 1;
  snap.stats.tokens_stored -= 3;
  const dump::Json m = dump::Verify(snap);
  EXPECT_FALSE(m["ok"].get<bool>());
  ExpectGolden("verify.txt", dump::VerifyText(m));
  ExpectGolden("verify.json", m.dump(2) + "\n");
}

TEST(DumpGolden, Diff) {
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok());
  KVCache& kv = **cache;
  const Snapshot before = *kv.TakeSnapshot({});
  // Seq 5 grows and compresses more history, seq 3 goes, a new one comes.
  std::mt19937_64 rng(7);
  ASSERT_TRUE(testing::Grow(kv, 5, 20, 4, -1, rng).ok());
  ASSERT_TRUE(kv.CompressOldEntries(5, 0, 0.1).ok());
  ASSERT_TRUE(kv.RemoveSequence(3).ok());
  const SeqId fresh = *kv.AddSequence();
  ASSERT_TRUE(testing::Grow(kv, fresh, 9, 9, -1, rng).ok());
  ASSERT_TRUE(kv.Truncate(1, 90).ok());
  const Snapshot after = *kv.TakeSnapshot({});
  const dump::Json m = dump::Diff(before, after);
  EXPECT_GT(m["blocks_compressed"].get<int64_t>(), 0);
  EXPECT_EQ(m["sequences"]["removed"].size(), 1u);
  EXPECT_EQ(m["sequences"]["added"].size(), 1u);
  EXPECT_EQ(m["sequences"]["grown"].size(), 1u);
  EXPECT_EQ(m["sequences"]["shrunk"].size(), 1u);
  ExpectGolden("diff.txt", dump::DiffText(m));
  ExpectGolden("diff.json", m.dump(2) + "\n");
  // Nothing changed: nothing to say but the config line's absence.
  const dump::Json same = dump::Diff(after, after);
  EXPECT_EQ(same["hot_blocks"]["allocated"], 0);
  EXPECT_TRUE(same["stats"].empty());
}

// Counts elements by name while expat parses; fails on malformed XML.
struct XmlCounts {
  int rects = 0, cells = 0, titles = 0;
  static void Start(void* data, const XML_Char* name, const XML_Char** attrs) {
    auto* c = static_cast<XmlCounts*>(data);
    const std::string tag = name;
    c->rects += tag == "rect";
    c->titles += tag == "title";
    for (int i = 0; attrs[i] != nullptr; i += 2) {
      if (std::string(attrs[i]) == "class" &&
          std::string(attrs[i + 1]) == "cell") {
        ++c->cells;
      }
    }
  }
  static void End(void*, const XML_Char*) {}
};

TEST(DumpGolden, MapIsWellFormedSvg) {
  const Snapshot snap = Showcase();
  dump::Json m;
  const std::string svg = dump::MapSvg(snap, &m);
  XmlCounts counts;
  XML_Parser parser = XML_ParserCreate(nullptr);
  XML_SetUserData(parser, &counts);
  XML_SetElementHandler(parser, XmlCounts::Start, XmlCounts::End);
  const bool parsed =
      XML_Parse(parser, svg.data(), static_cast<int>(svg.size()),
                /*isFinal=*/1) == XML_STATUS_OK;
  EXPECT_TRUE(parsed) << XML_ErrorString(XML_GetErrorCode(parser))
                      << " at line " << XML_GetCurrentLineNumber(parser);
  XML_ParserFree(parser);
  // One cell per block and per quantized cell, each with a tooltip.
  EXPECT_EQ(counts.cells, snap.hot.capacity + snap.quant.capacity);
  EXPECT_EQ(counts.titles, counts.cells);
  EXPECT_GT(counts.rects, counts.cells);  // the background and the legend
  EXPECT_EQ(m["cells"]["hot_free"], snap.stats.blocks_free);
  ExpectGolden("map.svg", svg);
  ExpectGolden("map.txt", dump::MapText(m));
}

// ---- The command line ----

struct CliRun {
  int code = -1;
  std::string out, err;
};

// Runs kvpage-dump with `args`, its standard output to `out` (a file the
// result reads back unless given).
CliRun Dump(const std::string& args, const std::string& out = "") {
  const std::string base = absl::StrCat(::testing::TempDir(), "/", getpid());
  const std::string out_path = out.empty() ? base + ".out" : out;
  const std::string cmd = absl::StrCat(KVPAGE_DUMP_BIN, " ", args, " >",
                                       out_path, " 2>", base, ".err");
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (out.empty()) r.out = ReadFile(out_path);
  r.err = ReadFile(base + ".err");
  return r;
}

class DumpCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/dump_cli_", getpid());
    ASSERT_EQ(std::system(("mkdir -p " + dir_).c_str()), 0);
    good_ = dir_ + "/good.snap";
    bad_ = dir_ + "/bad.snap";
    Snapshot snap = Showcase();
    ASSERT_TRUE(WriteSnapshotFile(snap, good_).ok());
    snap.hot.free_ids.pop_back();
    ASSERT_TRUE(WriteSnapshotFile(snap, bad_).ok());
  }
  void TearDown() override { (void)std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_, good_, bad_;
};

TEST_F(DumpCli, VerifyIsSilentOnAGoodSnapshot) {
  const CliRun r = Dump("verify " + good_);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
}

TEST_F(DumpCli, VerifyFailsWithTheViolation) {
  const CliRun r = Dump("verify " + bad_);
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("free_list: hot pool: block"));
  const CliRun j = Dump("verify --json " + bad_);
  EXPECT_EQ(j.code, 1);
  const dump::Json m = dump::Json::parse(j.out);
  EXPECT_EQ(m["schema_version"], dump::kSchemaVersion);
  EXPECT_FALSE(m["ok"].get<bool>());
}

TEST_F(DumpCli, EveryVerbRunsWithAndWithoutJson) {
  for (const std::string verb : {"summary", "tables", "blocks"}) {
    const CliRun r = Dump(verb + " " + good_);
    EXPECT_EQ(r.code, 0) << verb << ": " << r.err;
    EXPECT_FALSE(r.out.empty()) << verb;
    const CliRun j = Dump(verb + " --json " + good_);
    EXPECT_EQ(j.code, 0) << verb;
    EXPECT_EQ(dump::Json::parse(j.out)["schema_version"], dump::kSchemaVersion)
        << verb;
  }
  const CliRun diff = Dump("diff --json " + good_ + " " + bad_);
  EXPECT_EQ(diff.code, 0) << diff.err;
  const std::string svg = dir_ + "/map.svg";
  const CliRun map = Dump("map " + good_ + " --svg " + svg);
  EXPECT_EQ(map.code, 0) << map.err;
  EXPECT_THAT(ReadFile(svg), HasSubstr("</svg>"));
  const CliRun tables = Dump("tables --seq 5 --layer 2 " + good_);
  EXPECT_THAT(tables.out, HasSubstr("circular_buffer"));
  EXPECT_THAT(tables.out, ::testing::Not(HasSubstr("seq 1 ")));
}

TEST_F(DumpCli, BadUsageAndUnreadableFilesExitTwo) {
  EXPECT_EQ(Dump("").code, 2);                     // no verb
  EXPECT_EQ(Dump("frobnicate " + good_).code, 2);  // unknown verb
  EXPECT_EQ(Dump("summary").code, 2);              // missing file
  EXPECT_EQ(Dump("map " + good_).code, 2);         // missing --svg
  EXPECT_EQ(Dump("tables --seq -3 " + good_).code, 2);
  const CliRun missing = Dump("summary " + dir_ + "/none.snap");
  EXPECT_EQ(missing.code, 2);
  EXPECT_THAT(missing.err, HasSubstr("none.snap"));
  std::ofstream(dir_ + "/junk.snap") << "not a snapshot at all, not at all";
  const CliRun junk = Dump("verify " + dir_ + "/junk.snap");
  EXPECT_EQ(junk.code, 2);
  EXPECT_THAT(junk.err, HasSubstr("magic"));
  const CliRun help = Dump("--help");
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("verify"));
  EXPECT_EQ(Dump("verify --help").code, 0);
}

// A memory limit for a child process: ulimit -v, or with a sanitizer (whose
// shadow memory a virtual-memory limit cannot hold) its RSS limit.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KVPAGE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KVPAGE_SANITIZED 1
#endif
#endif
#ifdef KVPAGE_SANITIZED
constexpr char kMemoryLimit[] =
    "export ASAN_OPTIONS=hard_rss_limit_mb=2000:$ASAN_OPTIONS "
    "TSAN_OPTIONS=hard_rss_limit_mb=2000:$TSAN_OPTIONS; ";
#else
constexpr char kMemoryLimit[] = "ulimit -v 2000000; ";
#endif

// A file that never ends or never opens is refused at once (under a memory
// limit and a timeout, so that a tool that reads it anyway fails instead of
// taking the machine's memory or hanging).
TEST_F(DumpCli, SpecialFilesAreRefusedAtOnce) {
  const std::string fifo = dir_ + "/fifo.snap";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& file : {std::string("/dev/zero"), fifo}) {
    const std::string err = dir_ + "/special.err";
    const std::string cmd =
        absl::StrCat(kMemoryLimit, "timeout 20 ", KVPAGE_DUMP_BIN, " summary ",
                     file, " >/dev/null 2>", err);
    const int status = std::system(cmd.c_str());
    EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 2) << file;
    EXPECT_THAT(ReadFile(err), HasSubstr("not a regular file")) << file;
  }
}

// Bad usage is one line on stderr that names the flag or the word that is
// not a verb (CLI11's own errors took two lines, and without a verb it said
// "A subcommand is required" whatever was given).
TEST_F(DumpCli, UsageErrorsAreOneLineNamingTheFlagOrTheVerb) {
  const std::string verbs = "summary, tables, blocks, verify, diff, map";
  const std::pair<std::string, std::string> cases[] = {
      {"tables --layer -1 " + good_, "--layer: -1 is not an integer in "},
      {"tables --seq abc " + good_, "--seq: abc is not an integer in "},
      {"tables --seq -3 " + good_, "--seq"},
      {"frobnicate " + good_,
       "'frobnicate' is not a verb; the verbs are " + verbs},
      {"", "a verb is required: " + verbs},
      {"tables --bogus " + good_, "--bogus"},
      {"summary", "FILE is required"},
      {"map " + good_, "--svg is required"},
  };
  for (const auto& [args, says] : cases) {
    SCOPED_TRACE(args);
    const CliRun r = Dump(args);
    EXPECT_EQ(r.code, 2);
    EXPECT_EQ(r.out, "");
    EXPECT_THAT(r.err, ::testing::StartsWith("kvpage-dump: "));
    EXPECT_THAT(r.err, HasSubstr(says));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_THAT(r.err, ::testing::Not(HasSubstr("1797693")));
  }
}

// --seq and --layer name a sequence and a layer of the file, or the verb
// says so on stderr and exits 1: a typo must not look like an empty table.
// A number too large for the flag is bad usage (exit 2), not another number.
TEST_F(DumpCli, TablesOfAnUnknownSequenceOrLayerExitOne) {
  const CliRun wide = Dump("tables --seq 18446744073709551616 " + good_);
  EXPECT_EQ(wide.code, 2);
  EXPECT_THAT(wide.err, HasSubstr("--seq"));
  EXPECT_EQ(wide.out, "");
  for (const std::string seq :
       {"99", "9223372036854775807", "9223372036854775808",
        "18446744073709551615"}) {
    const CliRun r = Dump("tables --seq " + seq + " " + good_);
    EXPECT_EQ(r.code, 1) << seq;
    EXPECT_EQ(r.err,
              "kvpage-dump: --seq: no sequence " + seq + " in " + good_ + "\n");
    EXPECT_EQ(r.out, "");
  }
  const CliRun layer = Dump("tables --layer 4 " + good_);
  EXPECT_EQ(layer.code, 1);
  EXPECT_EQ(layer.out, "");
  EXPECT_EQ(layer.err, "kvpage-dump: --layer: no layer 4 in " + good_ +
                           " (it has 4 layers)\n");
  const CliRun huge = Dump("tables --layer 4294967296 " + good_);
  EXPECT_EQ(huge.code, 2);
  EXPECT_THAT(huge.err, HasSubstr("--layer"));
  const CliRun both = Dump("tables --seq 5 --layer 3 --json " + good_);
  EXPECT_EQ(both.code, 0) << both.err;
  EXPECT_EQ(dump::Json::parse(both.out)["sequences"][0]["id"], 5);
}

// Output that never reached standard output is a failure, not exit 0.
TEST_F(DumpCli, AFullStandardOutputExitsTwo) {
  const std::string svg = dir_ + "/map.svg";
  for (const std::string& args :
       {"summary " + good_, "summary --json " + good_, "tables " + good_,
        "blocks " + good_, "blocks --json " + good_, "verify " + bad_,
        "diff " + good_ + " " + bad_, "map " + good_ + " --svg " + svg}) {
    const CliRun r = Dump(args, "/dev/full");
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_EQ(r.err,
              "kvpage-dump: writing standard output: No space left on "
              "device\n")
        << args;
  }
  // A silent verify has nothing to lose.
  EXPECT_EQ(Dump("verify " + good_, "/dev/full").code, 0);
}

// `blocks` streams: a legitimate cache of 2^20 blocks, almost all free (an
// 8 MB snapshot), prints a row per block in both forms.
TEST_F(DumpCli, BlocksOfAMillionBlockSnapshot) {
  constexpr int64_t kBlocks = int64_t{1} << 20;
  auto cache = KVCache::Create({.num_layers = 1,
                                .num_kv_heads = 1,
                                .head_dim = 8,
                                .block_tokens = 1,
                                .num_blocks = kBlocks,
                                .max_seq_len = 1024});
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::mt19937_64 rng(3);
  std::vector<SeqId> seqs;
  for (int i = 0; i < 4; ++i) {
    seqs.push_back(*(*cache)->AddSequence());
    ASSERT_TRUE(testing::Grow(**cache, seqs.back(), 64, 64, -1, rng).ok());
  }
  ASSERT_TRUE((*cache)->Fork(seqs[0]).ok());
  const std::string path = dir_ + "/million.snap";
  ASSERT_TRUE((*cache)->WriteSnapshot(path).ok());
  cache->reset();
  EXPECT_EQ(Dump("verify " + path).code, 0);

  const std::string out = dir_ + "/million.out";
  const CliRun text = Dump("blocks " + path, out);
  ASSERT_EQ(text.code, 0) << text.err;
  std::ifstream lines(out);
  std::string line, last;
  int64_t count = 0;
  while (std::getline(lines, line)) {
    ++count;
    last = std::move(line);
  }
  EXPECT_EQ(count, kBlocks + 2);  // "hot pool", the column header
  // The fork's blocks are shared: the state column is 6 wide.
  EXPECT_EQ(last, absl::StrCat("  ", kBlocks - 1, "  free    0     -"));

  const CliRun json = Dump("blocks --json " + path, out);
  ASSERT_EQ(json.code, 0) << json.err;
  std::ifstream in(out, std::ios::binary | std::ios::ate);
  const std::streamoff size = in.tellg();
  ASSERT_GT(size, 200);
  in.seekg(size - 200);
  std::string tail(200, '\0');
  in.read(tail.data(), 200);
  EXPECT_THAT(tail, HasSubstr(absl::StrCat("\"id\": ", kBlocks - 1, ",")));
  EXPECT_THAT(tail, ::testing::EndsWith("\n  ],\n  \"quant\": []\n}\n"));
}

}  // namespace
}  // namespace kvpage
