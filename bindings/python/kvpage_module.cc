// The Python module `kvpage`: kvpage's C API (kvpage/kvpage_c.h) for
// engines written in Python, with numpy arrays for keys and values.
//
//   import kvpage, numpy as np
//   cache = kvpage.Cache(num_layers=2, num_kv_heads=8, head_dim=64,
//                        dtype="f16", num_blocks=256, max_seq_len=4096)
//   seq = cache.add_sequence()
//   k = np.zeros((5, 8, 64), np.float32)       # [tokens, kv_heads, head_dim]
//   cache.update(seq, 0, k, k, 5)
//   for block in cache.view(seq, 0).blocks:    # arrays over the pool itself
//       keys = block.k                         # [tokens, kv_heads, head_dim]
//
// Errors are exceptions whose class follows kvpage's status code:
// NotFoundError (a KeyError), InvalidArgumentError (a ValueError),
// ResourceExhaustedError (a MemoryError), OutOfRangeError (an IndexError),
// FailedPreconditionError and the rest (RuntimeErrors), all kvpage.Error,
// with kvpage's message unchanged; a call that raises changes nothing.
//
// Arrays handed to update() are read in place (no copy): C-contiguous
// float32, float16 (an f16 cache) or uint16 (the bits of the cache's f16 or
// bf16); anything else, a non-contiguous array included, is refused with
// InvalidArgumentError (np.ascontiguousarray makes one), as is an array in
// the other byte order. The GIL is released while kvpage copies or
// compresses token data; each cache has a lock, so Python threads may share
// one (their calls take turns; arrays taken from a view are not locked).
//
// Views: view() returns blocks whose .k and .v are read-only numpy arrays
// over the pool (compressed blocks: .dequantize()). Every call that changes
// the cache (and succeeds: a refused call changes nothing) bumps its
// generation; a view, or a block of it, read after such
// a call raises FailedPreconditionError. An array already taken from a block
// keeps the cache alive and never points at freed memory, but after a
// mutating call it may show other tokens: take arrays, read them, then
// change the cache.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kvpage/kvpage_c.h"

namespace py = pybind11;

namespace {

// The exception classes, by status code (made in PYBIND11_MODULE).
py::handle g_error, g_not_found, g_invalid, g_exhausted, g_out_of_range,
    g_precondition;

[[noreturn]] void Raise(kvpage_status status, const std::string& message) {
  py::handle cls = g_error;
  switch (status) {
    case KVPAGE_NOT_FOUND:
      cls = g_not_found;
      break;
    case KVPAGE_INVALID_ARGUMENT:
      cls = g_invalid;
      break;
    case KVPAGE_RESOURCE_EXHAUSTED:
      cls = g_exhausted;
      break;
    case KVPAGE_OUT_OF_RANGE:
      cls = g_out_of_range;
      break;
    case KVPAGE_FAILED_PRECONDITION:
      cls = g_precondition;
      break;
    default:
      break;
  }
  py::object error = cls(message);
  error.attr("code") = kvpage_status_name(status);
  PyErr_SetObject(cls.ptr(), error.ptr());
  throw py::error_already_set();
}

void Check(kvpage_status status) {
  if (status != KVPAGE_OK) Raise(status, kvpage_last_error());
}

// Checks a C call made without the GIL: the message is read before the GIL
// comes back (it is thread-local, so nothing else could change it).
struct Outcome {
  kvpage_status status = KVPAGE_OK;
  std::string message;
};
Outcome Capture(kvpage_status status) {
  return {status, status == KVPAGE_OK ? "" : kvpage_last_error()};
}
void Check(const Outcome& o) {
  if (o.status != KVPAGE_OK) Raise(o.status, o.message);
}

kvpage_dtype ParseDType(const std::string& name) {
  if (name == "f32") return KVPAGE_F32;
  if (name == "f16") return KVPAGE_F16;
  if (name == "bf16") return KVPAGE_BF16;
  Raise(KVPAGE_INVALID_ARGUMENT,
        "dtype '" + name + "' is not one of 'f32', 'f16', 'bf16'");
}

kvpage_overflow_policy ParsePolicy(const std::string& name) {
  if (name == "error") return KVPAGE_POLICY_ERROR;
  if (name == "truncate") return KVPAGE_POLICY_TRUNCATE;
  if (name == "sliding_window") return KVPAGE_POLICY_SLIDING_WINDOW;
  if (name == "circular_buffer") return KVPAGE_POLICY_CIRCULAR_BUFFER;
  Raise(KVPAGE_INVALID_ARGUMENT,
        "policy '" + name +
            "' is not one of 'error', 'truncate', 'sliding_window', "
            "'circular_buffer'");
}

py::dict StatsDict(const kvpage_cache_stats& s) {
  py::dict d;
#define KVPAGE_FIELD(name) d[#name] = s.name
  KVPAGE_FIELD(blocks_total);
  KVPAGE_FIELD(blocks_used);
  KVPAGE_FIELD(blocks_cached);
  KVPAGE_FIELD(blocks_free);
  KVPAGE_FIELD(utilization);
  KVPAGE_FIELD(block_bytes);
  KVPAGE_FIELD(memory_usage_bytes);
  KVPAGE_FIELD(arena_bytes);
  KVPAGE_FIELD(sequences);
  KVPAGE_FIELD(tokens_stored);
  KVPAGE_FIELD(slots_allocated);
  KVPAGE_FIELD(hits);
  KVPAGE_FIELD(misses);
  KVPAGE_FIELD(prefix_entries);
  KVPAGE_FIELD(quant_cells_total);
  KVPAGE_FIELD(quant_cells_used);
  KVPAGE_FIELD(quant_cell_bytes);
  KVPAGE_FIELD(quant_blocks_int8);
  KVPAGE_FIELD(quant_blocks_int4);
  KVPAGE_FIELD(bytes_per_token_hot);
  KVPAGE_FIELD(bytes_per_token_cold);
  KVPAGE_FIELD(bytes_saved);
  KVPAGE_FIELD(compressions_applied);
  KVPAGE_FIELD(compressions_skipped);
  KVPAGE_FIELD(decompressions);
  KVPAGE_FIELD(max_quant_error);
  KVPAGE_FIELD(mean_quant_error);
  KVPAGE_FIELD(evictions);
  KVPAGE_FIELD(blocks_released_by_policy);
  KVPAGE_FIELD(blocks_reused_by_ring);
  KVPAGE_FIELD(blocks_allocated);
  KVPAGE_FIELD(blocks_released);
  KVPAGE_FIELD(bytes_written);
  KVPAGE_FIELD(bytes_copied);
  KVPAGE_FIELD(prefix_queries);
  KVPAGE_FIELD(prefix_blocks_queried);
  KVPAGE_FIELD(prefix_tokens_queried);
  KVPAGE_FIELD(prefix_tokens_matched);
#undef KVPAGE_FIELD
  return d;
}

// A kvpage_cache owned by Python. generation counts the calls that may
// change the cache; views remember the one they were taken at.
class Cache {
 public:
  explicit Cache(const kvpage_config& config) {
    Check(kvpage_cache_create(&config, &raw_));
    kvpage_config c;
    kvpage_config_init(&c);
    Check(kvpage_cache_config(raw_, &c));
    heads_ = c.num_kv_heads;
    head_dim_ = c.head_dim;
    dtype_ = c.dtype;
    block_tokens_ = c.block_tokens;
  }
  ~Cache() { kvpage_cache_destroy(raw_); }
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  uint64_t generation() const { return generation_; }
  // After every call that changed the cache: its views are stale.
  void Bump() { ++generation_; }

  // Runs `call` on the handle under the cache's lock. The GIL does not
  // serialize the calls that release it, and a kvpage cache is
  // thread-compatible: one call at a time. The lock is taken after the GIL
  // is released, never the other way round, so the two cannot deadlock.
  template <typename Call>
  kvpage_status Locked(Call&& call) {
    std::lock_guard<std::mutex> lock(mu_);
    return call(raw_);
  }
  // The same with the GIL released (calls that copy token data).
  template <typename Call>
  Outcome Unlocked(Call&& call) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    return Capture(call(raw_));
  }
  int heads() const { return heads_; }
  int head_dim() const { return head_dim_; }
  int block_tokens() const { return block_tokens_; }
  kvpage_dtype dtype() const { return dtype_; }

 private:
  std::mutex mu_;
  kvpage_cache* raw_ = nullptr;
  uint64_t generation_ = 0;  // read and written with the GIL held
  int heads_ = 0, head_dim_ = 0, block_tokens_ = 0;
  kvpage_dtype dtype_ = KVPAGE_F16;
};

// An int32 array kvpage writes into in place: C-contiguous, writable, of
// at least `n` elements (and `ndim` dimensions), or InvalidArgumentError.
int32_t* Int32Out(py::array a, py::ssize_t n, int ndim, const char* what) {
  if (!a.dtype().is(py::dtype::of<int32_t>()) || a.ndim() != ndim ||
      !(a.flags() & py::array::c_style) || !a.writeable() || a.size() < n) {
    Raise(KVPAGE_INVALID_ARGUMENT,
          std::string(what) +
              " must be a writable, C-contiguous int32 array "
              "of " +
              std::to_string(ndim) + " dimensions and at least " +
              std::to_string(n) + " elements");
  }
  return static_cast<int32_t*>(a.mutable_data());
}

// Engine mode (docs/engine.md): the requests of one step, as numpy arrays.
py::array_t<int64_t> ReserveBatch(
    Cache& c, int layer, const std::vector<uint64_t>& seqs,
    const std::vector<int64_t>& seq_lens, const std::vector<int64_t>& tokens,
    const py::object& block_table, const py::object& table_lens, int32_t pad,
    const py::object& table_offsets, const py::object& table_window_starts) {
  if (seqs.size() != seq_lens.size() || seqs.size() != tokens.size()) {
    Raise(KVPAGE_INVALID_ARGUMENT,
          "reserve_batch: seqs, seq_lens and tokens differ in length");
  }
  std::vector<kvpage_reserve_request> step(seqs.size());
  int64_t total = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    step[i] = {seqs[i], seq_lens[i], tokens[i]};
    if (tokens[i] < 0) {
      Raise(KVPAGE_INVALID_ARGUMENT, "reserve_batch: tokens must be >= 0");
    }
    total += tokens[i];
  }
  py::array_t<int64_t> slots(total);
  kvpage_padded_tables tables{};
  const bool keep = !block_table.is_none();
  if (keep != !table_lens.is_none()) {
    Raise(KVPAGE_INVALID_ARGUMENT,
          "reserve_batch: block_table and table_lens come together");
  }
  if (keep) {
    const auto table = py::cast<py::array>(block_table);
    const auto lens = py::cast<py::array>(table_lens);
    const auto rows = static_cast<py::ssize_t>(seqs.size());
    if (table.ndim() != 2 || table.shape(0) < rows) {
      Raise(KVPAGE_INVALID_ARGUMENT,
            "reserve_batch: block_table must be [rows, max_blocks]");
    }
    tables = {sizeof tables,
              Int32Out(table, 0, 2, "block_table"),
              table.shape(1),
              pad,
              Int32Out(lens, rows, 1, "table_lens"),
              table_offsets.is_none()
                  ? nullptr
                  : Int32Out(py::cast<py::array>(table_offsets), rows, 1,
                             "table_offsets"),
              table_window_starts.is_none()
                  ? nullptr
                  : Int32Out(py::cast<py::array>(table_window_starts), rows, 1,
                             "table_window_starts")};
  }
  int64_t* out = slots.mutable_data();
  Check(c.Locked([&](kvpage_cache* h) {
    return kvpage_reserve_batch(h, layer, step.data(), step.size(), out,
                                static_cast<size_t>(total),
                                keep ? &tables : nullptr);
  }));
  c.Bump();
  return slots;
}

// The dtype an update array carries, or InvalidArgumentError.
kvpage_dtype ArrayDType(const Cache& c, const py::array& a, const char* what) {
  // Native byte order only: '=' native, '|' not applicable, '<' little
  // endian written out (this machine's).
  const std::string order = py::str(a.dtype().attr("byteorder"));
  const bool native =
      order == "=" || order == "|" ||
      order ==
          (py::module_::import("sys").attr("byteorder").cast<std::string>() ==
                   "little"
               ? "<"
               : ">");
  const char kind = a.dtype().kind();
  const py::ssize_t size = a.dtype().itemsize();
  if (native && kind == 'f' && size == 4) return KVPAGE_F32;
  const bool f16 = native && kind == 'f' && size == 2;
  const bool bits = native && kind == 'u' && size == 2;
  if (f16 && c.dtype() == KVPAGE_F16) return KVPAGE_F16;
  if (bits && c.dtype() != KVPAGE_F32) return c.dtype();
  Raise(KVPAGE_INVALID_ARGUMENT,
        std::string(what) + " has dtype " + std::string(py::str(a.dtype())) +
            ": pass float32, float16 (an f16 cache) or uint16 (the bits of "
            "an f16 or bf16 cache), in native byte order");
}

kvpage_token_span SpanOf(const Cache& c, const py::array& a, const char* what) {
  if (a.ndim() != 3 || a.shape(1) != c.heads() || a.shape(2) != c.head_dim()) {
    std::string shape = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
      shape += (i ? ", " : "") + std::to_string(a.shape(i));
    }
    Raise(KVPAGE_INVALID_ARGUMENT, std::string(what) + " has shape " + shape +
                                       "), not (tokens, " +
                                       std::to_string(c.heads()) + ", " +
                                       std::to_string(c.head_dim()) + ")");
  }
  if (!(a.flags() & py::array::c_style)) {
    Raise(KVPAGE_INVALID_ARGUMENT,
          std::string(what) +
              " is not C-contiguous: pass np.ascontiguousarray(" + what + ")");
  }
  return {a.data(), ArrayDType(c, a, what), static_cast<int64_t>(a.shape(0))};
}

// A view: its shape and blocks, valid while its cache's generation holds.
struct View {
  std::shared_ptr<Cache> owner;  // (the Python object keeps it alive)
  py::object cache;              // the Python Cache, base of the arrays
  uint64_t generation = 0;
  kvpage_view_info info{};
  std::vector<kvpage_block_view> blocks;

  void CheckFresh() const {
    if (owner->generation() != generation) {
      Raise(KVPAGE_FAILED_PRECONDITION,
            "this view was taken before a call that changed the cache: take "
            "a new view");
    }
  }
};

// One block of a view, by index.
struct Block {
  std::shared_ptr<View> view;
  size_t index = 0;

  const kvpage_block_view& raw() const {
    view->CheckFresh();
    return view->blocks[index];
  }
  // A read-only array over the pool: [tokens, kv_heads, head_dim].
  py::object Array(bool keys) const {
    const kvpage_block_view& b = raw();
    const kvpage_view_info& i = view->info;
    if (b.format != KVPAGE_BLOCK_HOT || !i.host_accessible) return py::none();
    const py::ssize_t elem = i.dtype == KVPAGE_F32 ? 4 : 2;
    py::dtype dt = i.dtype == KVPAGE_F32   ? py::dtype::of<float>()
                   : i.dtype == KVPAGE_F16 ? py::dtype("float16")
                                           : py::dtype::of<uint16_t>();
    const char* base = static_cast<const char*>(keys ? b.k : b.v) +
                       b.begin_slot * i.token_stride * elem;
    py::array a(dt,
                {py::ssize_t{b.tokens}, py::ssize_t{i.num_kv_heads},
                 py::ssize_t{i.head_dim}},
                {i.token_stride * elem, i.head_dim * elem, elem}, base,
                view->cache);
    a.attr("setflags")(py::arg("write") = false);
    return std::move(a);
  }
  py::tuple Dequantize() const {
    const kvpage_block_view b = raw();
    const size_t n = static_cast<size_t>(b.tokens) * view->info.num_kv_heads *
                     view->info.head_dim;
    py::array_t<float> k({py::ssize_t{b.tokens},
                          py::ssize_t{view->info.num_kv_heads},
                          py::ssize_t{view->info.head_dim}});
    py::array_t<float> v(k.request().shape);
    float* kp = k.mutable_data();
    float* vp = v.mutable_data();
    // Under the cache's lock: the block's bytes are the pool's.
    Check(view->owner->Unlocked([&](kvpage_cache*) {
      return kvpage_dequantize(&view->info, &b, kp, n, vp, n);
    }));
    return py::make_tuple(k, v);
  }
};

kvpage_config MakeConfig(int num_layers, int num_kv_heads, int head_dim,
                         const std::string& dtype, int block_tokens,
                         int64_t num_blocks, int64_t max_seq_len,
                         const std::string& policy, int64_t sink_tokens,
                         int64_t truncate_to, const py::object& compression,
                         bool group_layers) {
  kvpage_config c;
  kvpage_config_init(&c);
  c.group_layers = group_layers ? 1 : 0;
  c.num_layers = num_layers;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = head_dim;
  c.dtype = ParseDType(dtype);
  c.block_tokens = block_tokens;
  c.num_blocks = num_blocks;
  c.max_seq_len = max_seq_len;
  c.overflow = ParsePolicy(policy);
  c.sink_tokens = sink_tokens;
  c.truncate_to = truncate_to;
  if (!compression.is_none()) {
    py::dict q = compression.cast<py::dict>();
    for (auto item : q) {
      const std::string key = py::str(item.first);
      if (key != "bits" && key != "group_size" && key != "hot_tokens" &&
          key != "quant_cells" && key != "auto_compress" &&
          key != "max_rel_error" && key != "measure_error") {
        Raise(KVPAGE_INVALID_ARGUMENT,
              "compression has no field '" + key + "'");
      }
    }
    c.compression_enabled = 1;
    if (q.contains("bits")) c.compression_bits = q["bits"].cast<int>();
    if (q.contains("group_size")) {
      c.compression_group_size = q["group_size"].cast<int>();
    }
    if (q.contains("hot_tokens")) {
      c.compression_hot_tokens = q["hot_tokens"].cast<int64_t>();
    }
    if (q.contains("quant_cells")) {
      c.compression_quant_cells = q["quant_cells"].cast<int64_t>();
    }
    if (q.contains("auto_compress")) {
      c.compression_auto_compress = q["auto_compress"].cast<bool>();
    }
    if (q.contains("max_rel_error")) {
      c.compression_max_rel_error = q["max_rel_error"].cast<double>();
    }
    if (q.contains("measure_error")) {
      c.compression_measure_error = q["measure_error"].cast<bool>();
    }
  }
  return c;
}

std::shared_ptr<View> TakeView(py::object self, uint64_t seq, int layer) {
  auto owner = self.cast<std::shared_ptr<Cache>>();
  auto view = std::make_shared<View>();
  view->owner = owner;
  view->cache = self;
  view->generation = owner->generation();
  view->info.struct_size = sizeof view->info;
  kvpage_status s = owner->Locked([&](kvpage_cache* h) {
    return kvpage_view(h, seq, layer, &view->info, nullptr, 0);
  });
  if (s == KVPAGE_RESOURCE_EXHAUSTED) {
    view->blocks.resize(static_cast<size_t>(view->info.num_blocks));
    s = owner->Locked([&](kvpage_cache* h) {
      return kvpage_view(h, seq, layer, &view->info, view->blocks.data(),
                         view->blocks.size());
    });
  }
  Check(s);
  return view;
}

}  // namespace

PYBIND11_MODULE(kvpage, m) {
  m.doc() =
      "kvpage: a paged key/value cache for transformer serving engines "
      "(bindings/python; docs in the module's source and README).";
  py::object base = py::module_::import("builtins");
  auto make = [&](const char* name, py::object bases) {
    py::handle cls = PyErr_NewException((std::string("kvpage.") + name).c_str(),
                                        bases.ptr(), nullptr);
    m.add_object(name, cls);
    return cls;
  };
  g_error = make("Error", base.attr("RuntimeError"));
  auto with = [&](const char* builtin) {
    return py::make_tuple(g_error, base.attr(builtin));
  };
  g_not_found = make("NotFoundError", with("KeyError"));
  g_invalid = make("InvalidArgumentError", with("ValueError"));
  g_exhausted = make("ResourceExhaustedError", with("MemoryError"));
  g_out_of_range = make("OutOfRangeError", with("IndexError"));
  g_precondition = make("FailedPreconditionError", with("RuntimeError"));
  m.attr("__version__") = kvpage_version_string();

  py::class_<Block>(m, "Block")
      .def_property_readonly(
          "first_position",
          [](const Block& b) { return b.raw().first_position; })
      .def_property_readonly("tokens",
                             [](const Block& b) { return b.raw().tokens; })
      .def_property_readonly("block_id",
                             [](const Block& b) { return b.raw().block_id; })
      .def_property_readonly(
          "format",
          [](const Block& b) {
            const int f = b.raw().format;
            return std::string(f == KVPAGE_BLOCK_INT8   ? "int8"
                               : f == KVPAGE_BLOCK_INT4 ? "int4"
                                                        : "hot");
          })
      .def_property_readonly(
          "k", [](const Block& b) { return b.Array(true); },
          "keys over the pool (hot blocks), else None")
      .def_property_readonly(
          "v", [](const Block& b) { return b.Array(false); },
          "values over the pool (hot blocks), else None")
      .def("dequantize", &Block::Dequantize,
           "(k, v) as new float32 arrays, any format");

  py::class_<View, std::shared_ptr<View>>(m, "View")
      .def_property_readonly("blocks",
                             [](const std::shared_ptr<View>& v) {
                               v->CheckFresh();
                               py::list out;
                               for (size_t i = 0; i < v->blocks.size(); ++i) {
                                 out.append(Block{v, i});
                               }
                               return out;
                             })
      .def_property_readonly("length",
                             [](const View& v) {
                               v.CheckFresh();
                               return v.info.length;
                             })
      .def_property_readonly("tokens", [](const View& v) {
        v.CheckFresh();
        int64_t n = 0;
        for (const kvpage_block_view& b : v.blocks) n += b.tokens;
        return n;
      });

  py::class_<Cache, std::shared_ptr<Cache>>(m, "Cache")
      .def(py::init([](int num_layers, int num_kv_heads, int head_dim,
                       const std::string& dtype, int block_tokens,
                       int64_t num_blocks, int64_t max_seq_len,
                       const std::string& policy, int64_t sink_tokens,
                       int64_t truncate_to, py::object compression,
                       bool group_layers) {
             return std::make_shared<Cache>(MakeConfig(
                 num_layers, num_kv_heads, head_dim, dtype, block_tokens,
                 num_blocks, max_seq_len, policy, sink_tokens, truncate_to,
                 compression, group_layers));
           }),
           py::kw_only(), py::arg("num_layers"), py::arg("num_kv_heads"),
           py::arg("head_dim"), py::arg("dtype") = "f16",
           py::arg("block_tokens") = 16, py::arg("num_blocks"),
           py::arg("max_seq_len"), py::arg("policy") = "error",
           py::arg("sink_tokens") = 0, py::arg("truncate_to") = 0,
           py::arg("compression") = py::none(), py::arg("group_layers") = false)
      .def(
          "add_sequence",
          [](Cache& c, uint64_t salt) {
            kvpage_seq_id id = 0;
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_add_sequence(h, salt, &id);
            }));
            c.Bump();
            return id;
          },
          py::arg("salt") = 0)
      .def("fork",
           [](Cache& c, uint64_t parent) {
             kvpage_seq_id id = 0;
             Check(c.Locked(
                 [&](kvpage_cache* h) { return kvpage_fork(h, parent, &id); }));
             c.Bump();
             return id;
           })
      .def("remove_sequence",
           [](Cache& c, uint64_t seq) {
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_remove_sequence(h, seq);
             }));
             c.Bump();
           })
      .def("sequences",
           [](Cache& c) {
             size_t n = 0;
             (void)c.Locked([&](kvpage_cache* h) {
               return kvpage_sequences(h, nullptr, 0, &n);
             });
             std::vector<kvpage_seq_id> ids(n);
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_sequences(h, ids.data(), ids.size(), &n);
             }));
             return ids;
           })
      .def(
          "update",
          [](Cache& c, uint64_t seq, int layer, const py::array& k,
             const py::array& v, int64_t seq_len) {
            const kvpage_token_span ks = SpanOf(c, k, "k");
            const kvpage_token_span vs = SpanOf(c, v, "v");
            Check(c.Unlocked([&](kvpage_cache* h) {
              return kvpage_update(h, seq, layer, &ks, &vs, seq_len);
            }));
            c.Bump();
          },
          py::arg("seq"), py::arg("layer"), py::arg("k"), py::arg("v"),
          py::arg("seq_len"))
      .def("truncate",
           [](Cache& c, uint64_t seq, int64_t seq_len) {
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_truncate(h, seq, seq_len);
             }));
             c.Bump();
           })
      .def("length",
           [](Cache& c, uint64_t seq, int layer) {
             int64_t n = 0;
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_length(h, seq, layer, &n);
             }));
             return n;
           })
      .def("compress_old_entries",
           [](Cache& c, uint64_t seq, int layer, double keep_recent_fraction) {
             Check(c.Unlocked([&](kvpage_cache* h) {
               return kvpage_compress_old_entries(h, seq, layer,
                                                  keep_recent_fraction);
             }));
             c.Bump();
           })
      .def("append_tokens",
           [](Cache& c, uint64_t seq, const std::vector<int32_t>& ids) {
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_append_tokens(h, seq, ids.data(), ids.size());
             }));
             c.Bump();
           })
      .def(
          "match_prefix",
          [](Cache& c, uint64_t seq, const std::vector<int32_t>& ids,
             bool leave_last_token) {
            int64_t matched = 0;
            const kvpage_match_options options = {sizeof options,
                                                  leave_last_token ? 1 : 0};
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_match_prefix_ex(h, seq, ids.data(), ids.size(),
                                            &options, &matched);
            }));
            c.Bump();
            return matched;
          },
          py::arg("seq"), py::arg("ids"), py::arg("leave_last_token") = false)
      .def("view", &TakeView, py::arg("seq"), py::arg("layer"))
      .def(
          "reserve",
          [](Cache& c, uint64_t seq, int layer, int64_t seq_len,
             int64_t tokens) {
            if (tokens < 0) {
              Raise(KVPAGE_INVALID_ARGUMENT, "reserve: tokens must be >= 0");
            }
            py::array_t<int64_t> slots(tokens);
            int64_t* out = slots.mutable_data();
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_reserve(h, seq, layer, seq_len, tokens, out);
            }));
            c.Bump();
            return slots;
          },
          py::arg("seq"), py::arg("layer"), py::arg("seq_len"),
          py::arg("tokens"))
      .def("reserve_batch", &ReserveBatch, py::arg("layer"), py::arg("seqs"),
           py::arg("seq_lens"), py::arg("tokens"),
           py::arg("block_table") = py::none(),
           py::arg("table_lens") = py::none(), py::arg("pad") = 0,
           py::arg("table_offsets") = py::none(),
           py::arg("table_window_starts") = py::none())
      .def(
          "export_block_tables",
          [](Cache& c, int layer, const std::vector<uint64_t>& seqs,
             int64_t max_blocks, int32_t pad) {
            const auto rows = static_cast<py::ssize_t>(seqs.size());
            py::array_t<int32_t> table({rows, py::ssize_t{max_blocks}});
            py::array_t<int32_t> lens(rows), offsets(rows), starts(rows);
            const kvpage_padded_tables out{
                sizeof out,           table.mutable_data(),
                max_blocks,           pad,
                lens.mutable_data(),  offsets.mutable_data(),
                starts.mutable_data()};
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_export_block_tables(h, layer, seqs.data(),
                                                seqs.size(), &out);
            }));
            return py::make_tuple(table, lens, offsets, starts);
          },
          py::arg("layer"), py::arg("seqs"), py::arg("max_blocks"),
          py::arg("pad") = 0)
      .def(
          "export_block_tables_csr",
          [](Cache& c, int layer, const std::vector<uint64_t>& seqs) {
            // Room for every row: a row holds at most ceil(length / bt).
            size_t capacity = 0;
            for (uint64_t seq : seqs) {
              int64_t length = 0;
              Check(c.Locked([&](kvpage_cache* h) {
                return kvpage_length(h, seq, layer, &length);
              }));
              capacity += static_cast<size_t>((length + c.block_tokens() - 1) /
                                              c.block_tokens());
            }
            const auto rows = static_cast<py::ssize_t>(seqs.size());
            py::array_t<int32_t> indptr(rows + 1), indices(capacity),
                last(rows), lens(rows), offsets(rows), starts(rows);
            const kvpage_csr_tables out{sizeof out,
                                        indptr.mutable_data(),
                                        indices.mutable_data(),
                                        capacity,
                                        last.mutable_data(),
                                        lens.mutable_data(),
                                        offsets.mutable_data(),
                                        starts.mutable_data()};
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_export_block_tables_csr(h, layer, seqs.data(),
                                                    seqs.size(), &out);
            }));
            const int32_t used = indptr.at(rows);
            return py::make_tuple(
                indptr, indices.attr("__getitem__")(py::slice(0, used, 1)),
                last, lens, offsets, starts);
          },
          py::arg("layer"), py::arg("seqs"))
      .def("layer_group",
           [](Cache& c, int layer) {
             int32_t group = 0, slot = 0, layers = 0;
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_layer_group(h, layer, &group, &slot, &layers);
             }));
             return py::make_tuple(group, slot, layers);
           })
      .def("layer_base",
           [](Cache& c, int layer) {
             void* base = nullptr;
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_layer_base(h, layer, &base);
             }));
             return reinterpret_cast<uintptr_t>(base);
           })
      .def(
          "cached_prefix_tokens",
          [](Cache& c, const std::vector<int32_t>& ids, uint64_t salt,
             bool leave_last_token) {
            int64_t n = 0;
            const kvpage_match_options options = {sizeof options,
                                                  leave_last_token ? 1 : 0};
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_cached_prefix_tokens_ex(h, ids.data(), ids.size(),
                                                    salt, &options, &n);
            }));
            return n;
          },
          py::arg("ids"), py::arg("salt") = 0,
          py::arg("leave_last_token") = false)
      .def(
          "plan_admission",
          [](Cache& c, const std::vector<int32_t>& prompt, uint64_t salt,
             int64_t extra_tokens) {
            kvpage_admission a{};
            a.struct_size = sizeof a;
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_plan_admission(h, prompt.data(), prompt.size(),
                                           salt, extra_tokens, &a);
            }));
            py::dict d;
            d["cached_tokens"] = a.cached_tokens;
            d["blocks_needed"] = a.blocks_needed;
            d["blocks_available"] = a.blocks_available;
            d["fits"] = a.fits != 0;
            return d;
          },
          py::arg("prompt"), py::arg("salt") = 0, py::arg("extra_tokens") = 0)
      .def(
          "blocks_needed",
          [](Cache& c, uint64_t seq, int64_t seq_len, int64_t tokens) {
            int64_t n = 0;
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_blocks_needed(h, seq, seq_len, tokens, &n);
            }));
            return n;
          },
          py::arg("seq"), py::arg("seq_len"), py::arg("tokens"))
      .def("gather",
           [](Cache& c, uint64_t seq, int layer) {
             size_t tokens = 0;
             kvpage_status s = c.Locked([&](kvpage_cache* h) {
               return kvpage_gather(h, seq, layer, nullptr, nullptr, nullptr, 0,
                                    &tokens);
             });
             if (s != KVPAGE_RESOURCE_EXHAUSTED) Check(s);
             const py::ssize_t n = static_cast<py::ssize_t>(tokens);
             py::array_t<float> k(
                 {n, py::ssize_t{c.heads()}, py::ssize_t{c.head_dim()}});
             py::array_t<float> v(k.request().shape);
             py::array_t<int64_t> positions(n);
             float* kp = k.mutable_data();
             float* vp = v.mutable_data();
             int64_t* pp = positions.mutable_data();
             Check(c.Unlocked([&](kvpage_cache* h) {
               return kvpage_gather(h, seq, layer, kp, vp, pp, tokens, &tokens);
             }));
             return py::make_tuple(k, v, positions);
           })
      .def("stats",
           [](Cache& c) {
             kvpage_cache_stats s{};
             s.struct_size = sizeof s;
             Check(c.Locked(
                 [&](kvpage_cache* h) { return kvpage_stats(h, &s); }));
             return StatsDict(s);
           })
      .def("sequence_stats",
           [](Cache& c, uint64_t seq) {
             kvpage_sequence_stats s{};
             s.struct_size = sizeof s;
             Check(c.Locked([&](kvpage_cache* h) {
               return kvpage_seq_stats(h, seq, &s);
             }));
             py::dict d;
             d["current_length"] = s.current_length;
             d["max_length"] = s.max_length;
             d["tokens_stored"] = s.tokens_stored;
             d["blocks"] = s.blocks;
             d["utilization"] = s.utilization;
             d["memory_usage_bytes"] = s.memory_usage_bytes;
             d["evictions"] = s.evictions;
             return d;
           })
      .def("validate",
           [](Cache& c) {
             Check(
                 c.Locked([&](kvpage_cache* h) { return kvpage_validate(h); }));
           })
      .def(
          "write_snapshot",
          [](Cache& c, const std::string& path, bool include_token_data) {
            Check(c.Locked([&](kvpage_cache* h) {
              return kvpage_write_snapshot(h, path.c_str(),
                                           include_token_data ? 1 : 0);
            }));
          },
          py::arg("path"), py::arg("include_token_data") = false);

  m.def(
      "prefix_block_hash",
      [](uint64_t parent, uint64_t salt, const std::vector<int32_t>& ids) {
        return kvpage_prefix_block_hash(parent, salt, ids.data(), ids.size());
      },
      py::arg("parent"), py::arg("salt"), py::arg("ids"),
      "The chain hash naming one block of token ids (docs/sharing.md).");
  m.def(
      "verify_snapshot",
      [](const std::string& path) {
        kvpage_snapshot* snap = nullptr;
        Check(kvpage_snapshot_read(path.c_str(), &snap));
        size_t violations = 0;
        const kvpage_status s = kvpage_snapshot_verify(snap, &violations);
        const std::string message = s == KVPAGE_OK ? "" : kvpage_last_error();
        kvpage_cache_stats stats{};
        stats.struct_size = sizeof stats;
        (void)kvpage_snapshot_stats(snap, &stats);
        kvpage_snapshot_destroy(snap);
        if (s != KVPAGE_OK) Raise(s, message);
        return StatsDict(stats);
      },
      py::arg("path"),
      "Reads a snapshot file and checks every invariant; returns the "
      "statistics it recorded (kvpage.Error naming the first broken "
      "invariant).");
}
