//! The interface of the report that started kvpage: a Rust inference
//! engine's `KVCache`, one sequence, updated layer by layer. The names and
//! meanings are the report's, so that its engine can drop kvpage in; kvpage
//! stores the tokens in blocks and writes only what is new.
//!
//! ```
//! use kvpage::compat::{CacheStrategy, KVCache};
//! let mut cache = KVCache::new(2, 4, 8, 10, CacheStrategy::SlidingWindow)?;
//! let k = vec![0.25f32; 15 * 4 * 8]; // 15 tokens into a window of 10
//! cache.update(0, &k, &k, 15)?;
//! assert_eq!(cache.cached_tokens(0)?, 10);
//! # Ok::<(), kvpage::Error>(())
//! ```
//!
//! Where kvpage is stricter than the report's sketch:
//! - `update` refuses what cannot be stored instead of cutting it silently:
//!   k and v of different lengths, or not whole tokens; a gap (the tokens
//!   must end at `seq_len` and start at or before the layer's length);
//!   under [`CacheStrategy::Error`], more than `max_seq_len` tokens
//!   (ResourceExhausted). A refused update changes nothing.
//! - [`CacheStrategy::Truncate`] is a context shift: when the layer would
//!   pass `max_seq_len` visible tokens, the oldest are dropped in one step,
//!   leaving `max_seq_len / 2`, and the layer grows again.
//!   [`CacheStrategy::SlidingWindow`] keeps the newest `max_seq_len`;
//!   [`CacheStrategy::CircularBuffer`] keeps the same tokens in a fixed ring
//!   of blocks. No strategy moves a token.
//! - `compress_old_entries(layer, compression_ratio)` compresses the whole
//!   blocks (16 tokens) in the oldest `compression_ratio` of the layer's
//!   visible tokens to int8 (about 0.27x the bytes of f32 keys and values):
//!   "ratio" is the share of the history compressed, in [0, 1], not a size
//!   ratio. A circular buffer is never compressed.
//! - `current_len` is the longest layer's length; `cached_tokens` the
//!   tokens a layer's attention sees (after eviction).
//! - `get_cache_for_attention` copies the visible tokens, oldest first, as
//!   [tokens][num_kv_heads][head_dim] f32 (compressed blocks decoded). An
//!   engine that reads the blocks in place uses [`crate::Cache::view`].
use crate::{Cache, Compression, Config, DType, Error, Policy, SeqId};

/// What a layer does past `max_seq_len` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStrategy {
    CircularBuffer,
    SlidingWindow,
    Truncate,
    Error,
}

/// The report's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheStatistics {
    pub current_length: usize,
    pub max_length: usize,
    /// current_length / max_seq_len.
    pub utilization: f32,
    /// Bytes of the blocks the cache holds, in MiB.
    pub memory_usage_mb: f64,
    /// Prefix-cache lookups that matched, and that missed.
    pub hits: u64,
    pub misses: u64,
    pub compressions_applied: u64,
    /// Tokens evicted by the strategy.
    pub evictions: u64,
}

/// One sequence's keys and values for every layer, in kvpage.
pub struct KVCache {
    cache: Cache,
    seq: SeqId,
    num_layers: usize,
    max_seq_len: usize,
}

const BLOCK_TOKENS: usize = 16;

impl KVCache {
    /// A cache of one sequence holding at most `max_seq_len` visible tokens
    /// per layer, f32 (as the report's tensors), with int8 compression
    /// available to `compress_old_entries`.
    pub fn new(
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        max_seq_len: usize,
        strategy: CacheStrategy,
    ) -> Result<KVCache, Error> {
        // Every layer's window, plus a block for a ring's spare and one a
        // partly filled block takes.
        let blocks_per_layer = (max_seq_len + BLOCK_TOKENS - 1) / BLOCK_TOKENS + 2;
        let num_blocks = num_layers.saturating_mul(blocks_per_layer);
        let mut cache = Cache::new(&Config {
            num_layers,
            num_kv_heads,
            head_dim,
            dtype: DType::F32,
            block_tokens: BLOCK_TOKENS,
            num_blocks,
            max_seq_len,
            policy: match strategy {
                CacheStrategy::CircularBuffer => Policy::CircularBuffer,
                CacheStrategy::SlidingWindow => Policy::SlidingWindow,
                CacheStrategy::Truncate => Policy::Truncate,
                CacheStrategy::Error => Policy::Error,
            },
            sink_tokens: 0,
            truncate_to: 0,
            compression: Some(Compression {
                bits: 8,
                group_size: head_dim,
                hot_tokens: 0,
                quant_cells: num_blocks,
                auto_compress: false,
                max_rel_error: 0.0,
                measure_error: false,
            }),
            group_layers: false,
        })?;
        let seq = cache.add_sequence()?;
        Ok(KVCache { cache, seq, num_layers, max_seq_len })
    }

    /// Writes layer `layer_idx`'s keys and values of the tokens at positions
    /// [seq_len - tokens, seq_len), tokens = k.len() / (num_kv_heads *
    /// head_dim).
    pub fn update(&mut self, layer_idx: usize, k: &[f32], v: &[f32], seq_len: usize) -> Result<(), Error> {
        self.cache.update(self.seq, layer_idx, k, v, seq_len)
    }

    /// The longest layer's length.
    pub fn current_len(&self) -> usize {
        self.cache.sequence_stats(self.seq).map(|s| s.current_length as usize).unwrap_or(0)
    }

    /// The tokens layer `layer_idx`'s attention sees.
    pub fn cached_tokens(&self, layer_idx: usize) -> Result<usize, Error> {
        Ok(self.cache.view(self.seq, layer_idx)?.tokens())
    }

    /// A copy of layer `layer_idx`'s visible keys and values, oldest first.
    pub fn get_cache_for_attention(&self, layer_idx: usize) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let g = self.cache.gather(self.seq, layer_idx)?;
        Ok((g.k, g.v))
    }

    /// Compresses the oldest `compression_ratio` of layer `layer_idx`'s
    /// visible tokens (whole blocks) to int8.
    pub fn compress_old_entries(&mut self, layer_idx: usize, compression_ratio: f32) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&compression_ratio) {
            return Err(Error::invalid(format!(
                "compression_ratio {} is outside [0, 1]: the share of the history to compress",
                compression_ratio
            )));
        }
        self.cache.compress_old_entries(self.seq, layer_idx, 1.0 - f64::from(compression_ratio))
    }

    pub fn get_cache_stats(&self) -> CacheStatistics {
        let s = self.cache.stats();
        let seq = self.cache.sequence_stats(self.seq).unwrap_or_default();
        CacheStatistics {
            current_length: seq.current_length as usize,
            max_length: seq.max_length as usize,
            utilization: if self.max_seq_len == 0 {
                0.0
            } else {
                seq.current_length as f32 / self.max_seq_len as f32
            },
            memory_usage_mb: s.memory_usage_bytes as f64 / (1024.0 * 1024.0),
            hits: s.hits as u64,
            misses: s.misses as u64,
            compressions_applied: s.compressions_applied as u64,
            evictions: s.evictions as u64,
        }
    }

    /// Layers of the cache.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The kvpage cache underneath (views, stats, snapshots).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}
