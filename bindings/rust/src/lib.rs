//! kvpage from Rust: a paged key/value cache for transformer serving engines.
//!
//! A [`Cache`] keeps, for every sequence and layer, the keys and values of
//! the tokens seen so far in fixed-size blocks of one pool; [`Cache::update`]
//! writes only what is new, [`Cache::view`] hands attention the blocks
//! without a copy. Errors are [`Error`]s carrying kvpage's status code and
//! message; a call that fails changes nothing.
//!
//! ```
//! use kvpage::{Cache, Config};
//! let mut cache = Cache::new(&Config { num_layers: 1, num_kv_heads: 2, head_dim: 4,
//!                                      num_blocks: 16, max_seq_len: 64,
//!                                      ..Config::default() })?;
//! let seq = cache.add_sequence()?;
//! let k = vec![0.5f32; 3 * 2 * 4]; // 3 tokens, [tokens][kv_heads][head_dim]
//! cache.update(seq, 0, &k, &k, 3)?;
//! assert_eq!(cache.length(seq, 0)?, 3);
//! let view = cache.view(seq, 0)?;       // borrows the cache
//! assert_eq!(view.tokens(), 3);
//! # Ok::<(), kvpage::Error>(())
//! ```
//!
//! A view borrows the cache, so no call that changes the cache compiles
//! while a view is alive (C++'s "addresses stay valid until the next
//! non-const call", checked by the compiler):
//!
//! ```compile_fail
//! # use kvpage::{Cache, Config};
//! # let mut cache = Cache::new(&Config::default()).unwrap();
//! # let seq = cache.add_sequence().unwrap();
//! let view = cache.view(seq, 0).unwrap();
//! cache.truncate(seq, 0).unwrap(); // error: `cache` is borrowed by `view`
//! drop(view);
//! ```
//!
//! [`Cache`] is `Send` (it may move to another thread) but not `Sync`
//! (kvpage's cache is thread-compatible: one thread at a time):
//!
//! ```compile_fail
//! fn shared<T: Sync>() {}
//! shared::<kvpage::Cache>(); // error: `Cache` cannot be shared between threads
//! ```
//!
//! [`compat::KVCache`] is the interface of the report that started kvpage.

pub mod compat;
pub mod ffi;

use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

/// kvpage's status codes (absl::StatusCode's numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    fn from_raw(raw: i32) -> Code {
        use Code::*;
        match raw {
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }
}

/// A failed call: kvpage's status code and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub(crate) fn invalid(message: String) -> Error {
        Error { code: Code::InvalidArgument, message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The Result of a C call: Ok, or the thread's last error.
fn check(status: ffi::kvpage_status) -> Result<()> {
    if status == ffi::KVPAGE_OK {
        return Ok(());
    }
    // SAFETY: kvpage_last_error returns a valid NUL-terminated string owned by
    // this thread, unchanged until the next failing call.
    let message = unsafe { CStr::from_ptr(ffi::kvpage_last_error()) }
        .to_string_lossy()
        .into_owned();
    Err(Error { code: Code::from_raw(status), message })
}

/// The library's version, "major.minor.patch".
pub fn version() -> String {
    // SAFETY: a static string.
    unsafe { CStr::from_ptr(ffi::kvpage_version_string()) }
        .to_string_lossy()
        .into_owned()
}

/// The chain hash naming one block of token ids (kvpage/prefix.h): `parent`
/// is the previous block's hash, 0 for the first.
pub fn prefix_block_hash(parent: u64, salt: u64, ids: &[i32]) -> u64 {
    // SAFETY: ids is valid for its length.
    unsafe { ffi::kvpage_prefix_block_hash(parent, salt, ids.as_ptr(), ids.len()) }
}

/// What the hot pool stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

/// What a layer does when it would pass `max_seq_len` visible tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Error,
    Truncate,
    SlidingWindow,
    CircularBuffer,
}

/// The format of a block in a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    Hot,
    Int8,
    Int4,
}

/// Compressing cold blocks (kvpage/config.h's CompressionConfig).
#[derive(Clone, Debug, PartialEq)]
pub struct Compression {
    pub bits: u8, // 8 or 4
    pub group_size: usize,
    pub hot_tokens: usize,
    pub quant_cells: usize,
    pub auto_compress: bool,
    pub max_rel_error: f64,
    pub measure_error: bool,
}

/// A cache's shape and budget (kvpage/config.h's CacheConfig).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    pub block_tokens: usize,
    pub num_blocks: usize,
    pub max_seq_len: usize,
    pub policy: Policy,
    pub sink_tokens: usize,
    pub truncate_to: usize,
    pub compression: Option<Compression>,
    /// One block table per group of layers with the same policy (here all
    /// layers): a reservation serves every layer, each at its own
    /// `layer_base` (kvpage/config.h says when to choose it).
    pub group_layers: bool,
}

impl Default for Config {
    /// kvpage's defaults (f16, blocks of 16 tokens, no compression) with a
    /// small shape: 1 layer, 1 kv-head of 8, 64 blocks, 1024 tokens.
    fn default() -> Config {
        Config {
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 8,
            dtype: DType::F16,
            block_tokens: 16,
            num_blocks: 64,
            max_seq_len: 1024,
            policy: Policy::Error,
            sink_tokens: 0,
            truncate_to: 0,
            compression: None,
            group_layers: false,
        }
    }
}

fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::invalid(format!("{} is {}, too large", what, value)))
}
fn to_i64(value: usize, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid(format!("{} is {}, too large", what, value)))
}

impl Config {
    fn to_raw(&self) -> Result<ffi::kvpage_config> {
        // SAFETY: all-zero bytes are a valid kvpage_config (null pointer,
        // zero numbers); kvpage_config_defaults then fills in the defaults
        // for the struct_size given.
        let mut c: ffi::kvpage_config = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
        c.struct_size = std::mem::size_of::<ffi::kvpage_config>();
        // SAFETY: c is a whole kvpage_config.
        check(unsafe { ffi::kvpage_config_defaults(&mut c) })?;
        c.num_layers = to_i32(self.num_layers, "num_layers")?;
        c.num_kv_heads = to_i32(self.num_kv_heads, "num_kv_heads")?;
        c.head_dim = to_i32(self.head_dim, "head_dim")?;
        c.dtype = match self.dtype {
            DType::F32 => ffi::KVPAGE_F32,
            DType::F16 => ffi::KVPAGE_F16,
            DType::BF16 => ffi::KVPAGE_BF16,
        };
        c.block_tokens = to_i32(self.block_tokens, "block_tokens")?;
        c.num_blocks = to_i64(self.num_blocks, "num_blocks")?;
        c.max_seq_len = to_i64(self.max_seq_len, "max_seq_len")?;
        c.overflow = match self.policy {
            Policy::Error => ffi::KVPAGE_POLICY_ERROR,
            Policy::Truncate => ffi::KVPAGE_POLICY_TRUNCATE,
            Policy::SlidingWindow => ffi::KVPAGE_POLICY_SLIDING_WINDOW,
            Policy::CircularBuffer => ffi::KVPAGE_POLICY_CIRCULAR_BUFFER,
        };
        c.sink_tokens = to_i64(self.sink_tokens, "sink_tokens")?;
        c.truncate_to = to_i64(self.truncate_to, "truncate_to")?;
        c.group_layers = i32::from(self.group_layers);
        if let Some(q) = &self.compression {
            c.compression_enabled = 1;
            c.compression_bits = i32::from(q.bits);
            c.compression_group_size = to_i32(q.group_size, "group_size")?;
            c.compression_hot_tokens = to_i64(q.hot_tokens, "hot_tokens")?;
            c.compression_quant_cells = to_i64(q.quant_cells, "quant_cells")?;
            c.compression_auto_compress = i32::from(q.auto_compress);
            c.compression_max_rel_error = q.max_rel_error;
            c.compression_measure_error = i32::from(q.measure_error);
        }
        Ok(c)
    }
}

/// How `match_prefix_with` matches (kvpage::MatchOptions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchOptions {
    /// Stop the match so that the prompt's last token is left to compute
    /// (an engine needs its logits); without it a prompt cached whole is
    /// matched whole.
    pub leave_last_token: bool,
}

impl MatchOptions {
    fn to_c(self) -> ffi::kvpage_match_options {
        ffi::kvpage_match_options {
            struct_size: std::mem::size_of::<ffi::kvpage_match_options>(),
            leave_last_token: i32::from(self.leave_last_token),
        }
    }
}

/// Where a layer's blocks are (`Cache::layer_group`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerGroup {
    pub group: usize,
    pub slot: usize,
    pub layers: usize,
}

/// A sequence's id (never reused by its cache).
pub type SeqId = u64;

/// Cache-wide figures (docs/statistics.md has every field).
pub type Stats = ffi::kvpage_cache_stats;
/// One sequence's figures over its layers.
pub type SequenceStats = ffi::kvpage_sequence_stats;

/// A layer's visible tokens as f32, oldest first: `k` and `v` are
/// [positions.len()][num_kv_heads][head_dim].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gathered {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub positions: Vec<i64>,
}

/// A key/value cache. Dropping it releases every sequence's blocks.
pub struct Cache {
    raw: NonNull<ffi::kvpage_cache>,
    elems: usize, // num_kv_heads * head_dim
    dtype: DType,
    // A raw pointer is neither Send nor Sync; Send is granted below.
    _not_sync: PhantomData<*mut ()>,
}

// SAFETY: a kvpage cache may be used from any thread, one at a time
// (thread-compatible); `&mut self` methods and the absence of Sync ensure one
// at a time.
unsafe impl Send for Cache {}

impl Drop for Cache {
    fn drop(&mut self) {
        // SAFETY: raw came from kvpage_cache_create and is destroyed once.
        unsafe { ffi::kvpage_cache_destroy(self.raw.as_ptr()) }
    }
}

impl Cache {
    /// Builds a cache and reserves its pool. InvalidArgument for a bad
    /// config (naming the field), ResourceExhausted when the pool cannot be
    /// reserved.
    pub fn new(config: &Config) -> Result<Cache> {
        let raw_config = config.to_raw()?;
        let mut raw: *mut ffi::kvpage_cache = std::ptr::null_mut();
        // SAFETY: both pointers are valid for the call.
        check(unsafe { ffi::kvpage_cache_create(&raw_config, &mut raw) })?;
        Ok(Cache {
            raw: NonNull::new(raw).expect("kvpage_cache_create returned OK and NULL"),
            elems: config.num_kv_heads * config.head_dim,
            dtype: config.dtype,
            _not_sync: PhantomData,
        })
    }

    fn ptr(&self) -> *const ffi::kvpage_cache {
        self.raw.as_ptr()
    }
    fn mut_ptr(&mut self) -> *mut ffi::kvpage_cache {
        self.raw.as_ptr()
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> Result<SeqId> {
        self.add_sequence_with_salt(0)
    }

    /// A new sequence whose prefix-cache hashes mix in `salt` (a LoRA
    /// adapter, a tenant): it shares cached blocks only with equal salts.
    pub fn add_sequence_with_salt(&mut self, salt: u64) -> Result<SeqId> {
        let mut id = 0;
        // SAFETY: valid handle and output.
        check(unsafe { ffi::kvpage_add_sequence(self.mut_ptr(), salt, &mut id) })?;
        Ok(id)
    }

    /// A sequence sharing every block of `parent` (copy-on-write).
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let mut id = 0;
        // SAFETY: valid handle and output.
        check(unsafe { ffi::kvpage_fork(self.mut_ptr(), parent, &mut id) })?;
        Ok(id)
    }

    pub fn remove_sequence(&mut self, seq: SeqId) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { ffi::kvpage_remove_sequence(self.mut_ptr(), seq) })
    }

    /// Live sequence ids, ascending.
    pub fn sequences(&self) -> Vec<SeqId> {
        let mut count = 0usize;
        // SAFETY: capacity 0 with a null array only asks for the count.
        let _ = unsafe { ffi::kvpage_sequences(self.ptr(), std::ptr::null_mut(), 0, &mut count) };
        let mut ids = vec![0u64; count];
        // SAFETY: ids holds `count` elements.
        let status =
            unsafe { ffi::kvpage_sequences(self.ptr(), ids.as_mut_ptr(), ids.len(), &mut count) };
        if status != ffi::KVPAGE_OK {
            return Vec::new();
        }
        ids.truncate(count);
        ids
    }

    fn tokens_of(&self, k: usize, v: usize) -> Result<i64> {
        if k != v {
            return Err(Error::invalid(format!(
                "k has {} values and v {}: they must hold the same tokens",
                k, v
            )));
        }
        if self.elems == 0 || k % self.elems != 0 {
            return Err(Error::invalid(format!(
                "{} values are not whole tokens of num_kv_heads * head_dim = {}",
                k, self.elems
            )));
        }
        to_i64(k / self.elems, "tokens")
    }

    fn update_raw(
        &mut self,
        seq: SeqId,
        layer: usize,
        k: *const f32,
        v: *const f32,
        dtype: i32,
        tokens: i64,
        seq_len: usize,
    ) -> Result<()> {
        let ks = ffi::kvpage_token_span { data: k.cast(), dtype, tokens };
        let vs = ffi::kvpage_token_span { data: v.cast(), dtype, tokens };
        let layer = to_i32(layer, "layer")?;
        let seq_len = to_i64(seq_len, "seq_len")?;
        // SAFETY: k and v hold `tokens` tokens of `dtype`; kvpage reads them
        // during the call only.
        check(unsafe { ffi::kvpage_update(self.mut_ptr(), seq, layer, &ks, &vs, seq_len) })
    }

    /// The update rule: `k` and `v` ([tokens][num_kv_heads][head_dim], f32)
    /// hold the tokens at positions [seq_len - tokens, seq_len).
    pub fn update(&mut self, seq: SeqId, layer: usize, k: &[f32], v: &[f32], seq_len: usize) -> Result<()> {
        let tokens = self.tokens_of(k.len(), v.len())?;
        self.update_raw(seq, layer, k.as_ptr(), v.as_ptr(), ffi::KVPAGE_F32, tokens, seq_len)
    }

    /// The update rule with keys and values already in the cache's 16-bit
    /// dtype (f16 or bf16 bits).
    pub fn update_bits(&mut self, seq: SeqId, layer: usize, k: &[u16], v: &[u16], seq_len: usize) -> Result<()> {
        let dtype = match self.dtype {
            DType::F16 => ffi::KVPAGE_F16,
            DType::BF16 => ffi::KVPAGE_BF16,
            DType::F32 => {
                return Err(Error::invalid("the cache stores f32: pass f32 values to update".into()))
            }
        };
        let tokens = self.tokens_of(k.len(), v.len())?;
        self.update_raw(seq, layer, k.as_ptr().cast(), v.as_ptr().cast(), dtype, tokens, seq_len)
    }

    /// Rolls every layer of `seq` back to at most `seq_len` tokens.
    pub fn truncate(&mut self, seq: SeqId, seq_len: usize) -> Result<()> {
        let seq_len = to_i64(seq_len, "seq_len")?;
        // SAFETY: valid handle.
        check(unsafe { ffi::kvpage_truncate(self.mut_ptr(), seq, seq_len) })
    }

    /// The seq_len of the layer's last update.
    pub fn length(&self, seq: SeqId, layer: usize) -> Result<usize> {
        let mut n = 0i64;
        // SAFETY: valid handle and output.
        check(unsafe { ffi::kvpage_length(self.ptr(), seq, to_i32(layer, "layer")?, &mut n) })?;
        Ok(n as usize)
    }

    /// Compresses the whole blocks in the oldest `1 - keep_recent_fraction`
    /// of the layer's visible tokens (FailedPrecondition without
    /// compression).
    pub fn compress_old_entries(&mut self, seq: SeqId, layer: usize, keep_recent_fraction: f64) -> Result<()> {
        let layer = to_i32(layer, "layer")?;
        // SAFETY: valid handle.
        check(unsafe { ffi::kvpage_compress_old_entries(self.mut_ptr(), seq, layer, keep_recent_fraction) })
    }

    /// Prefix caching: the token ids of `seq`, appended.
    pub fn append_tokens(&mut self, seq: SeqId, ids: &[i32]) -> Result<()> {
        // SAFETY: ids is valid for its length.
        check(unsafe { ffi::kvpage_append_tokens(self.mut_ptr(), seq, ids.as_ptr(), ids.len()) })
    }

    /// Attaches the longest cached prefix of `ids` to the empty `seq`;
    /// returns the tokens it holds.
    pub fn match_prefix(&mut self, seq: SeqId, ids: &[i32]) -> Result<usize> {
        self.match_prefix_with(seq, ids, MatchOptions::default())
    }

    /// `match_prefix` with options: `leave_last_token` stops the match so
    /// that the prompt's last token is left to compute.
    pub fn match_prefix_with(&mut self, seq: SeqId, ids: &[i32], options: MatchOptions) -> Result<usize> {
        let mut matched = 0i64;
        let options = options.to_c();
        // SAFETY: ids is valid for its length; options lives across the
        // call; matched is an output.
        check(unsafe {
            ffi::kvpage_match_prefix_ex(self.mut_ptr(), seq, ids.as_ptr(), ids.len(), &options, &mut matched)
        })?;
        Ok(matched as usize)
    }

    /// Engine mode: the update rule without data. Returns the slot of each
    /// of the `tokens` positions ending at `seq_len` (`block_id *
    /// block_tokens + slot`, or -1 for one evicted in this very call); the
    /// engine's kernel writes them at `layer_base(layer)`. `tokens == 0`
    /// below the length rolls back (speculative drafts).
    pub fn reserve(&mut self, seq: SeqId, layer: usize, seq_len: usize, tokens: usize) -> Result<Vec<i64>> {
        let mut slots = slot_vec(tokens)?;
        let layer = to_i32(layer, "layer")?;
        let seq_len = to_i64(seq_len, "seq_len")?;
        let n = to_i64(tokens, "tokens")?;
        // SAFETY: slots holds `tokens` entries.
        check(unsafe { ffi::kvpage_reserve(self.mut_ptr(), seq, layer, seq_len, n, slots.as_mut_ptr()) })?;
        Ok(slots)
    }

    /// One scheduler step, all or nothing: `(seq, seq_len, tokens)` per
    /// request; returns the slot mappings one after the other. With
    /// `tables`, its padded rows (row i: request i) are kept current.
    pub fn reserve_batch(
        &mut self,
        layer: usize,
        requests: &[(SeqId, usize, usize)],
        tables: Option<&mut BlockTables>,
    ) -> Result<Vec<i64>> {
        let mut step = Vec::with_capacity(requests.len());
        let mut total = 0usize;
        for &(seq, seq_len, tokens) in requests {
            step.push(ffi::kvpage_reserve_request {
                seq,
                seq_len: to_i64(seq_len, "seq_len")?,
                tokens: to_i64(tokens, "tokens")?,
            });
            total = total
                .checked_add(tokens)
                .ok_or_else(|| Error::invalid("the requests' tokens overflow".into()))?;
        }
        let mut slots = slot_vec(total)?;
        let raw = match tables {
            Some(t) => {
                if t.rows() < requests.len() {
                    return Err(Error::invalid(format!(
                        "tables hold {} rows; {} requests",
                        t.rows(),
                        requests.len()
                    )));
                }
                Some(t.raw())
            }
            None => None,
        };
        let layer = to_i32(layer, "layer")?;
        // SAFETY: step, slots and the tables' arrays are valid for their
        // lengths (BlockTables holds rows * max_blocks entries).
        check(unsafe {
            ffi::kvpage_reserve_batch(
                self.mut_ptr(),
                layer,
                step.as_ptr(),
                step.len(),
                slots.as_mut_ptr(),
                slots.len(),
                raw.as_ref().map_or(std::ptr::null(), |r| r as *const _),
            )
        })?;
        Ok(slots)
    }

    /// The padded block tables of `seqs` (docs/engine.md), into `tables`.
    pub fn export_block_tables(&self, layer: usize, seqs: &[SeqId], tables: &mut BlockTables) -> Result<()> {
        if tables.rows() < seqs.len() {
            return Err(Error::invalid(format!("tables hold {} rows; {} sequences", tables.rows(), seqs.len())));
        }
        let raw = tables.raw();
        let layer = to_i32(layer, "layer")?;
        // SAFETY: the arrays hold rows * max_blocks and rows entries.
        check(unsafe { ffi::kvpage_export_block_tables(self.ptr(), layer, seqs.as_ptr(), seqs.len(), &raw) })
    }

    /// The layer group of `layer`: the table it reads, its storage slot and
    /// the layers sharing the table (each layer is a group of one without
    /// `Config::group_layers`).
    pub fn layer_group(&self, layer: usize) -> Result<LayerGroup> {
        let (mut group, mut slot, mut layers) = (0i32, 0i32, 0i32);
        // SAFETY: valid handle and outputs.
        check(unsafe {
            ffi::kvpage_layer_group(self.ptr(), to_i32(layer, "layer")?, &mut group, &mut slot, &mut layers)
        })?;
        Ok(LayerGroup { group: group as usize, slot: slot as usize, layers: layers as usize })
    }

    /// Where `layer`'s blocks live: block b at this address + b *
    /// block_bytes (in the storage's address space).
    pub fn layer_base(&self, layer: usize) -> Result<*mut std::ffi::c_void> {
        let mut base = std::ptr::null_mut();
        // SAFETY: valid handle and output.
        check(unsafe { ffi::kvpage_layer_base(self.ptr(), to_i32(layer, "layer")?, &mut base) })?;
        Ok(base)
    }

    /// The tokens `match_prefix` would attach now; changes nothing.
    pub fn cached_prefix_tokens(&self, ids: &[i32], salt: u64) -> Result<usize> {
        self.cached_prefix_tokens_with(ids, salt, MatchOptions::default())
    }

    /// The tokens `match_prefix_with(.., options)` would attach now.
    pub fn cached_prefix_tokens_with(&self, ids: &[i32], salt: u64, options: MatchOptions) -> Result<usize> {
        let mut n = 0i64;
        let options = options.to_c();
        // SAFETY: ids is valid for its length; options lives across the call.
        check(unsafe {
            ffi::kvpage_cached_prefix_tokens_ex(self.ptr(), ids.as_ptr(), ids.len(), salt, &options, &mut n)
        })?;
        Ok(n as usize)
    }

    /// What admitting a request of `prompt` growing by `extra_tokens` takes
    /// (cached tokens, the most blocks it needs at once, what the pool can
    /// give); changes nothing.
    pub fn plan_admission(&self, prompt: &[i32], salt: u64, extra_tokens: usize) -> Result<Admission> {
        let mut a = ffi::kvpage_admission {
            struct_size: std::mem::size_of::<ffi::kvpage_admission>(),
            ..Default::default()
        };
        let extra = to_i64(extra_tokens, "extra_tokens")?;
        // SAFETY: prompt is valid for its length; a is an output.
        check(unsafe {
            ffi::kvpage_plan_admission(self.ptr(), prompt.as_ptr(), prompt.len(), salt, extra, &mut a)
        })?;
        Ok(Admission {
            cached_tokens: a.cached_tokens as usize,
            blocks_needed: a.blocks_needed as usize,
            blocks_available: a.blocks_available as usize,
            fits: a.fits != 0,
        })
    }

    /// The blocks the pool would supply for an update of every layer of
    /// `seq` now; changes nothing.
    pub fn blocks_needed(&self, seq: SeqId, seq_len: usize, tokens: usize) -> Result<usize> {
        let mut n = 0i64;
        let seq_len = to_i64(seq_len, "seq_len")?;
        let tokens = to_i64(tokens, "tokens")?;
        // SAFETY: valid handle and output.
        check(unsafe { ffi::kvpage_blocks_needed(self.ptr(), seq, seq_len, tokens, &mut n) })?;
        Ok(n as usize)
    }

    /// The layer's visible tokens, block by block, without a copy. The view
    /// borrows the cache: nothing can change it while the view lives.
    pub fn view(&self, seq: SeqId, layer: usize) -> Result<View<'_>> {
        let layer = to_i32(layer, "layer")?;
        let mut info = ffi::kvpage_view_info {
            struct_size: std::mem::size_of::<ffi::kvpage_view_info>(),
            ..Default::default()
        };
        let mut blocks: Vec<ffi::kvpage_block_view> = Vec::new();
        loop {
            // SAFETY: blocks holds `len` elements.
            let status = unsafe {
                ffi::kvpage_view(self.ptr(), seq, layer, &mut info, blocks.as_mut_ptr(), blocks.len())
            };
            if status == ffi::KVPAGE_OK {
                break;
            }
            let wanted = info.num_blocks.max(0) as usize;
            if status == Code::ResourceExhausted as i32 && wanted > blocks.len() {
                blocks.resize(wanted, ffi::kvpage_block_view::default());
                continue;
            }
            check(status)?;
        }
        blocks.truncate(info.num_blocks as usize);
        Ok(View { info, blocks, _cache: PhantomData })
    }

    /// A copy of the layer's visible tokens as f32, with their positions.
    pub fn gather(&self, seq: SeqId, layer: usize) -> Result<Gathered> {
        let layer = to_i32(layer, "layer")?;
        let mut tokens = 0usize;
        // SAFETY: capacity 0 asks for the count; nothing is written.
        let status = unsafe {
            ffi::kvpage_gather(
                self.ptr(),
                seq,
                layer,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                &mut tokens,
            )
        };
        if status != ffi::KVPAGE_OK && status != Code::ResourceExhausted as i32 {
            check(status)?;
        }
        let mut g = Gathered {
            k: vec![0.0; tokens * self.elems],
            v: vec![0.0; tokens * self.elems],
            positions: vec![0; tokens],
        };
        // SAFETY: the buffers hold `tokens` tokens.
        check(unsafe {
            ffi::kvpage_gather(
                self.ptr(),
                seq,
                layer,
                g.k.as_mut_ptr(),
                g.v.as_mut_ptr(),
                g.positions.as_mut_ptr(),
                tokens,
                &mut tokens,
            )
        })?;
        Ok(g)
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats { struct_size: std::mem::size_of::<Stats>(), ..Default::default() };
        // SAFETY: valid handle and output; cannot fail on a live cache.
        let _ = unsafe { ffi::kvpage_stats(self.ptr(), &mut s) };
        s
    }

    pub fn sequence_stats(&self, seq: SeqId) -> Result<SequenceStats> {
        let mut s = SequenceStats { struct_size: std::mem::size_of::<SequenceStats>(), ..Default::default() };
        // SAFETY: valid handle and output.
        check(unsafe { ffi::kvpage_seq_stats(self.ptr(), seq, &mut s) })?;
        Ok(s)
    }

    /// Walks every invariant: Internal naming the first broken one.
    pub fn validate(&self) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { ffi::kvpage_validate(self.ptr()) })
    }

    /// Writes a snapshot file (kvpage-dump reads it).
    pub fn write_snapshot(&self, path: &Path, include_token_data: bool) -> Result<()> {
        let c_path = path_to_c(path)?;
        // SAFETY: c_path is NUL-terminated.
        check(unsafe {
            ffi::kvpage_write_snapshot(self.ptr(), c_path.as_ptr(), i32::from(include_token_data))
        })
    }
}

fn path_to_c(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} holds a NUL byte", path.display())))
}

/// A slot mapping of `n` entries, or InvalidArgument when it cannot be
/// allocated (kvpage would refuse that many tokens anyway).
fn slot_vec(n: usize) -> Result<Vec<i64>> {
    let mut slots = Vec::new();
    slots
        .try_reserve_exact(n)
        .map_err(|_| Error::invalid(format!("{} tokens: no room for their slot mapping", n)))?;
    slots.resize(n, 0);
    Ok(slots)
}

/// Padded block tables an attention kernel reads (docs/engine.md): row i
/// at `block_table[i * max_blocks..]`, entries past its blocks set to `pad`.
pub struct BlockTables {
    pub block_table: Vec<i32>,
    pub max_blocks: usize,
    pub pad: i32,
    pub seq_lens: Vec<i32>,
    pub block_offsets: Vec<i32>,
    pub window_starts: Vec<i32>,
}

impl BlockTables {
    /// `rows` rows of `max_blocks` entries, all `pad`.
    pub fn new(rows: usize, max_blocks: usize, pad: i32) -> BlockTables {
        BlockTables {
            block_table: vec![pad; rows * max_blocks],
            max_blocks,
            pad,
            seq_lens: vec![0; rows],
            block_offsets: vec![0; rows],
            window_starts: vec![0; rows],
        }
    }
    pub fn rows(&self) -> usize {
        self.seq_lens.len().min(self.block_offsets.len()).min(self.window_starts.len()).min(
            if self.max_blocks == 0 { 0 } else { self.block_table.len() / self.max_blocks },
        )
    }
    /// Row i's block ids, padding included.
    pub fn row(&self, i: usize) -> &[i32] {
        &self.block_table[i * self.max_blocks..(i + 1) * self.max_blocks]
    }
    fn raw(&mut self) -> ffi::kvpage_padded_tables {
        ffi::kvpage_padded_tables {
            struct_size: std::mem::size_of::<ffi::kvpage_padded_tables>(),
            block_table: self.block_table.as_mut_ptr(),
            max_blocks: self.max_blocks as i64,
            pad: self.pad,
            seq_lens: self.seq_lens.as_mut_ptr(),
            block_offsets: self.block_offsets.as_mut_ptr(),
            window_starts: self.window_starts.as_mut_ptr(),
        }
    }
}

/// What admitting a request would take (`Cache::plan_admission`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub cached_tokens: usize,
    pub blocks_needed: usize,
    pub blocks_available: usize,
    pub fits: bool,
}

/// One block of a view.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    raw: ffi::kvpage_block_view,
    info: &'a ffi::kvpage_view_info,
}

impl<'a> Block<'a> {
    pub fn first_position(&self) -> i64 {
        self.raw.first_position
    }
    pub fn tokens(&self) -> usize {
        self.raw.tokens as usize
    }
    pub fn block_id(&self) -> u32 {
        self.raw.block_id
    }
    pub fn format(&self) -> BlockFormat {
        match self.raw.format {
            ffi::KVPAGE_BLOCK_INT8 => BlockFormat::Int8,
            ffi::KVPAGE_BLOCK_INT4 => BlockFormat::Int4,
            _ => BlockFormat::Hot,
        }
    }

    /// The keys and values of a hot f32 block where they lie in the pool:
    /// token t's [num_kv_heads][head_dim] start at t * token_stride. None
    /// for other blocks (use [`Block::dequantize`]) and for storage that is
    /// not host memory.
    pub fn f32_slices(&self) -> Option<(&'a [f32], &'a [f32], usize)> {
        if self.format() != BlockFormat::Hot
            || self.info.dtype != ffi::KVPAGE_F32
            || self.info.host_accessible == 0
            || self.raw.tokens == 0
        {
            return None;
        }
        let stride = self.info.token_stride as usize;
        let elems = (self.info.num_kv_heads * self.info.head_dim) as usize;
        let len = (self.raw.tokens as usize - 1) * stride + elems;
        let first = self.raw.begin_slot as usize * stride;
        // SAFETY: the view's block holds `tokens` slots from begin_slot, each
        // token_stride elements apart, alive while the cache is borrowed
        // (lifetime 'a).
        unsafe {
            let k = std::slice::from_raw_parts((self.raw.k as *const f32).add(first), len);
            let v = std::slice::from_raw_parts((self.raw.v as *const f32).add(first), len);
            Some((k, v, stride))
        }
    }

    /// The block's keys and values as f32, [tokens][num_kv_heads][head_dim].
    pub fn dequantize(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.tokens() * (self.info.num_kv_heads * self.info.head_dim) as usize;
        let mut k = vec![0.0f32; n];
        let mut v = vec![0.0f32; n];
        // SAFETY: info and raw came from kvpage_view; the buffers hold n.
        check(unsafe { ffi::kvpage_dequantize(self.info, &self.raw, k.as_mut_ptr(), n, v.as_mut_ptr(), n) })?;
        Ok((k, v))
    }
}

/// The visible tokens of one sequence and layer, block by block, oldest
/// first. Borrows its cache.
#[derive(Debug)]
pub struct View<'a> {
    info: ffi::kvpage_view_info,
    blocks: Vec<ffi::kvpage_block_view>,
    _cache: PhantomData<&'a Cache>,
}

impl<'a> View<'a> {
    pub fn blocks(&self) -> impl Iterator<Item = Block<'_>> + '_ {
        self.blocks.iter().map(move |b| Block { raw: *b, info: &self.info })
    }
    /// Visible tokens over all blocks.
    pub fn tokens(&self) -> usize {
        self.blocks.iter().map(|b| b.tokens as usize).sum()
    }
    /// The layer's length (seq_len of its last update).
    pub fn length(&self) -> usize {
        self.info.length as usize
    }
    pub fn token_stride(&self) -> usize {
        self.info.token_stride as usize
    }
    /// Reference decode attention of one query token ([num_q_heads]
    /// [head_dim]) over the view; returns [num_q_heads][head_dim].
    pub fn attend(&self, query: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; query.len()];
        // SAFETY: info and blocks came from kvpage_view and the cache is
        // borrowed; query and out hold their lengths.
        check(unsafe {
            ffi::kvpage_attend(&self.info, self.blocks.as_ptr(), query.as_ptr(), query.len(), out.as_mut_ptr(), out.len())
        })?;
        Ok(out)
    }
}

/// A snapshot file read back (what kvpage-dump inspects).
#[derive(Debug)]
pub struct Snapshot {
    raw: NonNull<ffi::kvpage_snapshot>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // SAFETY: raw came from kvpage_snapshot_read, destroyed once.
        unsafe { ffi::kvpage_snapshot_destroy(self.raw.as_ptr()) }
    }
}

impl Snapshot {
    pub fn read(path: &Path) -> Result<Snapshot> {
        let c_path = path_to_c(path)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: c_path is NUL-terminated; raw is an output.
        check(unsafe { ffi::kvpage_snapshot_read(c_path.as_ptr(), &mut raw) })?;
        Ok(Snapshot { raw: NonNull::new(raw).expect("kvpage_snapshot_read returned OK and NULL") })
    }
    /// Checks every invariant offline: DataLoss naming the first broken one.
    pub fn verify(&self) -> Result<()> {
        let mut violations = 0usize;
        // SAFETY: valid handle and output.
        check(unsafe { ffi::kvpage_snapshot_verify(self.raw.as_ptr(), &mut violations) })
    }
    /// The statistics the cache had when the snapshot was taken.
    pub fn stats(&self) -> Stats {
        let mut s = Stats { struct_size: std::mem::size_of::<Stats>(), ..Default::default() };
        // SAFETY: valid handle and output.
        let _ = unsafe { ffi::kvpage_snapshot_stats(self.raw.as_ptr(), &mut s) };
        s
    }
}
