// kvpage-dump map: the pools as an SVG picture, one square per block and cell,
// coloured by state and owner, with a legend; streamed as the walk reaches
// the cells.
#include <algorithm>
#include <cmath>
#include <map>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/dump/dump.h"
#include "tools/dump/holdings.h"
#include "tools/dump/text.h"

namespace kvpage::dump {
namespace {

constexpr const char* kFree = "#e6e6e6";
constexpr const char* kCached = "#f0c05a";
constexpr const char* kShared = "#5e3c99";
constexpr const char* kInt8 = "#2166ac";
constexpr const char* kInt8V = "#67a9cf";
constexpr const char* kInt4 = "#1b9e77";
constexpr const char* kUnknown = "#000000";
// One colour per sequence, cycled (none of them close to the state colours).
constexpr const char* kSequenceColours[] = {
    "#e15759", "#59a14f", "#f28e2b", "#76b7b2", "#b07aa1",
    "#ff9da7", "#9c755f", "#8cd17d", "#d37295", "#a0cbe8"};
constexpr int kSequenceColourCount = 10;

// The picture's measures, in pixels.
constexpr int kCell = 12, kGap = 1, kMargin = 16, kLegendWidth = 260;
constexpr int kTitleHeight = 20;       // a grid's title above its cells
constexpr int kLegendRow = kCell + 6;  // one legend entry

// (colour, label) of each legend entry.
using Legend = std::vector<std::pair<std::string, std::string>>;

std::string Escape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

// A cell's tooltip: "block 4: used, refs 2; seq 3 layer 1 block 1; ...".
std::string CellTitle(const char* unit, size_t id, const std::string& state,
                      uint32_t refs, const std::vector<Holder>& holders) {
  std::string out =
      absl::StrFormat("%s %d: %s, refs %d", unit, id, state, refs);
  for (const Holder& holder : holders) {
    absl::StrAppend(&out, "; ", HolderName(holder));
  }
  return out;
}

// Each sequence's colour (an index into kSequenceColours), in file order.
std::map<SeqId, int> SequenceColours(const Snapshot& snap) {
  std::map<SeqId, int> colour_of;
  for (const SnapshotSequence& seq : snap.sequences) {
    const int next = static_cast<int>(colour_of.size());
    colour_of.emplace(seq.id, next % kSequenceColourCount);
  }
  return colour_of;
}

// The states, then the sequences' colours (until they repeat), then the
// quantized formats when there is a quantized pool.
Legend MakeLegend(const std::map<SeqId, int>& colour_of, bool quant_pool) {
  Legend legend = {{kFree, "free"},
                   {kCached, "cached (prefix cache only)"},
                   {kShared, "shared by sequences"}};
  int listed = 0;
  for (const auto& [seq, colour] : colour_of) {
    if (listed++ == kSequenceColourCount) {
      legend.push_back({kUnknown, "(colours repeat for later sequences)"});
      break;
    }
    legend.push_back(
        {kSequenceColours[colour], absl::StrFormat("seq %d", seq)});
  }
  if (quant_pool) {
    legend.push_back({kInt8, "int8 block"});
    legend.push_back({kInt8V, "int8 block, V cell"});
    legend.push_back({kInt4, "int4 block"});
  }
  return legend;
}

// One pool's grid of cells.
struct Grid {
  std::string title;
  bool quant = false;
  size_t cells = 0;
  int cols = 0, top = 0;  // top: the title's; the cells start below it
};

// The layout, computed before any cell is written so that the cells can be
// written as the walk reaches them: grids stacked on the left, the legend
// on the right.
struct Layout {
  std::vector<Grid> grids;
  int legend_x = 0, width = 0, height = 0;
};

Layout MakeLayout(const Holdings& holdings, size_t legend_entries) {
  Layout layout;
  layout.grids.push_back(
      {.title = absl::StrFormat("hot pool: %d blocks", holdings.hot.size()),
       .cells = holdings.hot.size()});
  if (!holdings.quant.empty()) {
    layout.grids.push_back({.title = absl::StrFormat("quantized pool: %d cells",
                                                     holdings.quant.size()),
                            .quant = true,
                            .cells = holdings.quant.size()});
  }
  int y = kMargin, grids_width = 0;
  for (Grid& grid : layout.grids) {
    grid.cols = std::clamp(
        static_cast<int>(std::ceil(std::sqrt(2.0 * grid.cells))), 16, 128);
    grid.top = y;
    const int rows = static_cast<int>((grid.cells + grid.cols - 1) / grid.cols);
    grids_width = std::max(grids_width, grid.cols * (kCell + kGap));
    y += kTitleHeight + rows * (kCell + kGap) + kMargin;
  }
  layout.legend_x = kMargin + grids_width + 2 * kMargin;
  const int legend_bottom =
      kMargin + kTitleHeight + static_cast<int>(legend_entries) * kLegendRow;
  layout.width = layout.legend_x + kLegendWidth;
  layout.height = std::max(y, legend_bottom + kMargin);
  return layout;
}

void WriteHeader(const Layout& layout, std::ostream& out) {
  out << absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<style>.title { font-weight: bold; font-size: 13px; }</style>\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      layout.width, layout.height, layout.width, layout.height);
}

// A cell: its state, colour and tooltip.
struct Cell {
  std::string state;
  const char* colour = kUnknown;
  std::string title;
};

// A hot block: its state's colour, or when one sequence uses it, that
// sequence's.
Cell HotCell(const Snapshot& snap, const Holdings& holdings,
             const std::map<SeqId, int>& colour_of, size_t id) {
  Cell cell;
  cell.state = HotState(snap, holdings, id);
  cell.colour = cell.state == "free"     ? kFree
                : cell.state == "cached" ? kCached
                : cell.state == "shared" ? kShared
                                         : kUnknown;
  if (cell.state == "used") {
    for (const Holder& holder : holdings.hot[id]) {
      auto it = colour_of.find(holder.seq);
      if (!holder.prefix && it != colour_of.end()) {
        cell.colour = kSequenceColours[it->second];
        break;
      }
    }
  }
  cell.title = CellTitle("block", id, cell.state, RefCount(snap.hot, id),
                         holdings.hot[id]);
  return cell;
}

Cell QuantCell(const Snapshot& snap, const Holdings& holdings, size_t id) {
  Cell cell;
  cell.state = QuantState(snap, holdings, id);
  cell.colour = cell.state == "free"     ? kFree
                : cell.state == "int8"   ? kInt8
                : cell.state == "int8_v" ? kInt8V
                : cell.state == "int4"   ? kInt4
                                         : kUnknown;
  cell.title = CellTitle("cell", id, cell.state, RefCount(snap.quant, id),
                         holdings.quant[id]);
  return cell;
}

// A grid's title and its cells, one per block or cell, counted by state
// ("hot_used", "quant_int8", ...) into `counts`; stops once `out` fails.
void WriteGrid(const Snapshot& snap, const Holdings& holdings,
               const std::map<SeqId, int>& colour_of, const Grid& grid,
               std::ostream& out, std::map<std::string, int64_t>& counts) {
  out << absl::StrFormat("<text x=\"%d\" y=\"%d\" class=\"title\">%s</text>\n",
                         kMargin, grid.top + 12, Escape(grid.title));
  for (size_t id = 0; id < grid.cells && out; ++id) {
    const Cell cell = grid.quant ? QuantCell(snap, holdings, id)
                                 : HotCell(snap, holdings, colour_of, id);
    ++counts[absl::StrCat(grid.quant ? "quant_" : "hot_", cell.state)];
    const int x = kMargin + static_cast<int>(id % grid.cols) * (kCell + kGap);
    const int y = grid.top + kTitleHeight +
                  static_cast<int>(id / grid.cols) * (kCell + kGap);
    out << absl::StrFormat(
        "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
        "fill=\"%s\"><title>%s</title></rect>\n",
        x, y, kCell, kCell, cell.colour, Escape(cell.title));
  }
}

void WriteLegend(const Legend& legend, int x, std::ostream& out) {
  out << absl::StrFormat(
      "<text x=\"%d\" y=\"%d\" class=\"title\">legend</text>\n", x,
      kMargin + 12);
  int y = kMargin + kTitleHeight;
  for (const auto& [colour, label] : legend) {
    out << absl::StrFormat(
        "<rect class=\"key\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
        "fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
        x, y, kCell, kCell, colour, x + kCell + 6, y + 10, Escape(label));
    y += kLegendRow;
  }
}

// What was drawn: the pools' sizes, the cells by state, the legend.
Json MapModel(const Holdings& holdings,
              const std::map<std::string, int64_t>& counts,
              const Legend& legend) {
  Json j;
  j["schema_version"] = kSchemaVersion;
  j["hot_blocks"] = holdings.hot.size();
  j["quant_cells"] = holdings.quant.size();
  j["cells"] = Json::object();
  for (const auto& [state, count] : counts) j["cells"][state] = count;
  j["legend"] = Json::array();
  for (const auto& [colour, label] : legend) {
    j["legend"].push_back({{"colour", colour}, {"label", label}});
  }
  return j;
}

}  // namespace

void WriteMapSvg(const Snapshot& snap, std::ostream& out, Json* model) {
  const Holdings holdings = Walk(snap);
  const std::map<SeqId, int> colour_of = SequenceColours(snap);
  const Legend legend = MakeLegend(colour_of, !holdings.quant.empty());
  const Layout layout = MakeLayout(holdings, legend.size());
  WriteHeader(layout, out);
  std::map<std::string, int64_t> counts;
  for (const Grid& grid : layout.grids) {
    WriteGrid(snap, holdings, colour_of, grid, out, counts);
  }
  WriteLegend(legend, layout.legend_x, out);
  out << "</svg>\n";
  if (model != nullptr) *model = MapModel(holdings, counts, legend);
}

std::string MapSvg(const Snapshot& snap, Json* model) {
  std::ostringstream out;
  WriteMapSvg(snap, out, model);
  return out.str();
}

std::string MapText(const Json& model) {
  KeyValueList cells;
  for (const auto& [state, count] : model["cells"].items()) {
    cells.push_back({state, Num(count)});
  }
  return absl::StrFormat("%s hot blocks, %s quantized cells drawn\n%s",
                         Num(model["hot_blocks"]), Num(model["quant_cells"]),
                         KeyValues(cells));
}

}  // namespace kvpage::dump
