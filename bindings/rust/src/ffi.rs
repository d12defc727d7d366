//! The C API (`kvpage/kvpage_c.h`) as Rust sees it: `#[repr(C)]` structs
//! field for field, enums as their `int` values, and the functions. The safe
//! API in `lib.rs` is built on these; nothing here checks anything.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

pub type kvpage_status = c_int;
pub type kvpage_seq_id = u64;

pub const KVPAGE_OK: kvpage_status = 0;

pub const KVPAGE_F32: c_int = 0;
pub const KVPAGE_F16: c_int = 1;
pub const KVPAGE_BF16: c_int = 2;

pub const KVPAGE_POLICY_ERROR: c_int = 0;
pub const KVPAGE_POLICY_TRUNCATE: c_int = 1;
pub const KVPAGE_POLICY_SLIDING_WINDOW: c_int = 2;
pub const KVPAGE_POLICY_CIRCULAR_BUFFER: c_int = 3;

pub const KVPAGE_BLOCK_HOT: c_int = 0;
pub const KVPAGE_BLOCK_INT8: c_int = 1;
pub const KVPAGE_BLOCK_INT4: c_int = 2;

#[repr(C)]
pub struct kvpage_cache {
    _private: [u8; 0],
}

#[repr(C)]
pub struct kvpage_snapshot {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvpage_match_options {
    pub struct_size: usize,
    pub leave_last_token: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvpage_layer_policy {
    pub layer: i32,
    pub overflow: c_int,
    pub max_seq_len: i64,
    pub sink_tokens: i64,
    pub truncate_to: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvpage_config {
    pub struct_size: usize,
    pub num_layers: i32,
    pub num_kv_heads: i32,
    pub head_dim: i32,
    pub dtype: c_int,
    pub block_tokens: i32,
    pub num_blocks: i64,
    pub max_seq_len: i64,
    pub overflow: c_int,
    pub sink_tokens: i64,
    pub truncate_to: i64,
    pub layer_policies: *const kvpage_layer_policy,
    pub num_layer_policies: usize,
    pub prefault: i32,
    pub huge_pages: i32,
    pub compression_enabled: i32,
    pub compression_bits: i32,
    pub compression_group_size: i32,
    pub compression_hot_tokens: i64,
    pub compression_quant_cells: i64,
    pub compression_auto_compress: i32,
    pub compression_measure_error: i32,
    pub compression_max_rel_error: f64,
    pub group_layers: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvpage_token_span {
    pub data: *const c_void,
    pub dtype: c_int,
    pub tokens: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvpage_cache_stats {
    pub struct_size: usize,
    pub blocks_total: i64,
    pub blocks_used: i64,
    pub blocks_cached: i64,
    pub blocks_free: i64,
    pub utilization: f64,
    pub block_bytes: i64,
    pub memory_usage_bytes: i64,
    pub arena_bytes: i64,
    pub sequences: i64,
    pub tokens_stored: i64,
    pub slots_allocated: i64,
    pub hits: i64,
    pub misses: i64,
    pub prefix_entries: i64,
    pub quant_cells_total: i64,
    pub quant_cells_used: i64,
    pub quant_cell_bytes: i64,
    pub quant_blocks_int8: i64,
    pub quant_blocks_int4: i64,
    pub bytes_per_token_hot: f64,
    pub bytes_per_token_cold: f64,
    pub bytes_saved: i64,
    pub compressions_applied: i64,
    pub compressions_skipped: i64,
    pub decompressions: i64,
    pub max_quant_error: f64,
    pub mean_quant_error: f64,
    pub evictions: i64,
    pub blocks_released_by_policy: i64,
    pub blocks_reused_by_ring: i64,
    pub blocks_allocated: i64,
    pub blocks_released: i64,
    pub bytes_written: i64,
    pub bytes_copied: i64,
    pub prefix_queries: i64,
    pub prefix_blocks_queried: i64,
    pub prefix_tokens_queried: i64,
    pub prefix_tokens_matched: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvpage_sequence_stats {
    pub struct_size: usize,
    pub current_length: i64,
    pub max_length: i64,
    pub tokens_stored: i64,
    pub blocks: i64,
    pub utilization: f64,
    pub memory_usage_bytes: i64,
    pub evictions: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvpage_view_info {
    pub struct_size: usize,
    pub dtype: c_int,
    pub num_kv_heads: i32,
    pub head_dim: i32,
    pub block_tokens: i32,
    pub token_stride: i64,
    pub quant_group_size: i32,
    pub host_accessible: i32,
    pub length: i64,
    pub num_blocks: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvpage_block_view {
    pub k: *const c_void,
    pub v: *const c_void,
    pub block_id: u32,
    pub begin_slot: i32,
    pub tokens: i32,
    pub first_position: i64,
    pub format: c_int,
    pub quant_k_codes: *const c_void,
    pub quant_k_scales: *const c_void,
    pub quant_k_mins: *const c_void,
    pub quant_v_codes: *const c_void,
    pub quant_v_scales: *const c_void,
    pub quant_v_mins: *const c_void,
    pub quant_error: f64,
}

impl Default for kvpage_block_view {
    fn default() -> Self {
        let null = std::ptr::null();
        kvpage_block_view {
            k: null,
            v: null,
            block_id: 0,
            begin_slot: 0,
            tokens: 0,
            first_position: 0,
            format: KVPAGE_BLOCK_HOT,
            quant_k_codes: null,
            quant_k_scales: null,
            quant_k_mins: null,
            quant_v_codes: null,
            quant_v_scales: null,
            quant_v_mins: null,
            quant_error: 0.0,
        }
    }
}

extern "C" {
    pub fn kvpage_version() -> c_int;
    pub fn kvpage_version_string() -> *const c_char;
    pub fn kvpage_last_error() -> *const c_char;
    pub fn kvpage_config_defaults(config: *mut kvpage_config) -> kvpage_status;
    pub fn kvpage_validate_config(config: *const kvpage_config) -> kvpage_status;
    pub fn kvpage_cache_create(
        config: *const kvpage_config,
        out: *mut *mut kvpage_cache,
    ) -> kvpage_status;
    pub fn kvpage_cache_destroy(cache: *mut kvpage_cache);
    pub fn kvpage_cache_config(cache: *const kvpage_cache, out: *mut kvpage_config)
        -> kvpage_status;
    pub fn kvpage_add_sequence(
        cache: *mut kvpage_cache,
        salt: u64,
        out: *mut kvpage_seq_id,
    ) -> kvpage_status;
    pub fn kvpage_fork(
        cache: *mut kvpage_cache,
        parent: kvpage_seq_id,
        out: *mut kvpage_seq_id,
    ) -> kvpage_status;
    pub fn kvpage_remove_sequence(cache: *mut kvpage_cache, seq: kvpage_seq_id)
        -> kvpage_status;
    pub fn kvpage_sequences(
        cache: *const kvpage_cache,
        ids: *mut kvpage_seq_id,
        capacity: usize,
        count: *mut usize,
    ) -> kvpage_status;
    pub fn kvpage_update(
        cache: *mut kvpage_cache,
        seq: kvpage_seq_id,
        layer: i32,
        k: *const kvpage_token_span,
        v: *const kvpage_token_span,
        seq_len: i64,
    ) -> kvpage_status;
    pub fn kvpage_truncate(cache: *mut kvpage_cache, seq: kvpage_seq_id, seq_len: i64)
        -> kvpage_status;
    pub fn kvpage_length(
        cache: *const kvpage_cache,
        seq: kvpage_seq_id,
        layer: i32,
        out: *mut i64,
    ) -> kvpage_status;
    pub fn kvpage_compress_old_entries(
        cache: *mut kvpage_cache,
        seq: kvpage_seq_id,
        layer: i32,
        keep_recent_fraction: f64,
    ) -> kvpage_status;
    pub fn kvpage_prefix_block_hash(parent: u64, salt: u64, ids: *const i32, count: usize) -> u64;
    pub fn kvpage_append_tokens(
        cache: *mut kvpage_cache,
        seq: kvpage_seq_id,
        ids: *const i32,
        count: usize,
    ) -> kvpage_status;
    pub fn kvpage_match_prefix(
        cache: *mut kvpage_cache,
        seq: kvpage_seq_id,
        ids: *const i32,
        count: usize,
        matched: *mut i64,
    ) -> kvpage_status;
    pub fn kvpage_match_prefix_ex(
        cache: *mut kvpage_cache,
        seq: kvpage_seq_id,
        ids: *const i32,
        count: usize,
        options: *const kvpage_match_options,
        matched: *mut i64,
    ) -> kvpage_status;
    pub fn kvpage_view(
        cache: *const kvpage_cache,
        seq: kvpage_seq_id,
        layer: i32,
        info: *mut kvpage_view_info,
        blocks: *mut kvpage_block_view,
        capacity: usize,
    ) -> kvpage_status;
    pub fn kvpage_gather(
        cache: *const kvpage_cache,
        seq: kvpage_seq_id,
        layer: i32,
        k: *mut f32,
        v: *mut f32,
        positions: *mut i64,
        capacity_tokens: usize,
        tokens: *mut usize,
    ) -> kvpage_status;
    pub fn kvpage_dequantize(
        info: *const kvpage_view_info,
        block: *const kvpage_block_view,
        k_out: *mut f32,
        k_capacity: usize,
        v_out: *mut f32,
        v_capacity: usize,
    ) -> kvpage_status;
    pub fn kvpage_attend(
        info: *const kvpage_view_info,
        blocks: *const kvpage_block_view,
        query: *const f32,
        query_floats: usize,
        out: *mut f32,
        out_floats: usize,
    ) -> kvpage_status;
    pub fn kvpage_stats(cache: *const kvpage_cache, out: *mut kvpage_cache_stats)
        -> kvpage_status;
    pub fn kvpage_seq_stats(
        cache: *const kvpage_cache,
        seq: kvpage_seq_id,
        out: *mut kvpage_sequence_stats,
    ) -> kvpage_status;
    pub fn kvpage_validate(cache: *const kvpage_cache) -> kvpage_status;
    pub fn kvpage_write_snapshot(
        cache: *const kvpage_cache,
        path: *const c_char,
        include_token_data: i32,
    ) -> kvpage_status;
    pub fn kvpage_snapshot_read(path: *const c_char, out: *mut *mut kvpage_snapshot)
        -> kvpage_status;
    pub fn kvpage_snapshot_verify(snapshot: *const kvpage_snapshot, violations: *mut usize)
        -> kvpage_status;
    pub fn kvpage_snapshot_stats(
        snapshot: *const kvpage_snapshot,
        out: *mut kvpage_cache_stats,
    ) -> kvpage_status;
    pub fn kvpage_snapshot_destroy(snapshot: *mut kvpage_snapshot);

    // Engine mode (kvpage/engine.h).
    pub fn kvpage_layer_group(
        cache: *const kvpage_cache,
        layer: i32,
        group: *mut i32,
        slot: *mut i32,
        layers: *mut i32,
    ) -> c_int;
    pub fn kvpage_layer_base(cache: *const kvpage_cache, layer: i32, out: *mut *mut c_void)
        -> kvpage_status;
    pub fn kvpage_reserve(
        cache: *mut kvpage_cache,
        seq: kvpage_seq_id,
        layer: i32,
        seq_len: i64,
        tokens: i64,
        slot_mapping: *mut i64,
    ) -> kvpage_status;
    pub fn kvpage_reserve_batch(
        cache: *mut kvpage_cache,
        layer: i32,
        requests: *const kvpage_reserve_request,
        count: usize,
        slot_mapping: *mut i64,
        slots: usize,
        tables: *const kvpage_padded_tables,
    ) -> kvpage_status;
    pub fn kvpage_export_block_tables(
        cache: *const kvpage_cache,
        layer: i32,
        seqs: *const kvpage_seq_id,
        rows: usize,
        out: *const kvpage_padded_tables,
    ) -> kvpage_status;
    pub fn kvpage_export_block_tables_csr(
        cache: *const kvpage_cache,
        layer: i32,
        seqs: *const kvpage_seq_id,
        rows: usize,
        out: *const kvpage_csr_tables,
    ) -> kvpage_status;
    pub fn kvpage_cached_prefix_tokens(
        cache: *const kvpage_cache,
        tokens: *const i32,
        count: usize,
        salt: u64,
        out: *mut i64,
    ) -> kvpage_status;
    pub fn kvpage_cached_prefix_tokens_ex(
        cache: *const kvpage_cache,
        tokens: *const i32,
        count: usize,
        salt: u64,
        options: *const kvpage_match_options,
        out: *mut i64,
    ) -> kvpage_status;
    pub fn kvpage_plan_admission(
        cache: *const kvpage_cache,
        prompt: *const i32,
        count: usize,
        salt: u64,
        extra_tokens: i64,
        out: *mut kvpage_admission,
    ) -> kvpage_status;
    pub fn kvpage_blocks_needed(
        cache: *const kvpage_cache,
        seq: kvpage_seq_id,
        seq_len: i64,
        tokens: i64,
        out: *mut i64,
    ) -> kvpage_status;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvpage_reserve_request {
    pub seq: kvpage_seq_id,
    pub seq_len: i64,
    pub tokens: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvpage_padded_tables {
    pub struct_size: usize,
    pub block_table: *mut i32,
    pub max_blocks: i64,
    pub pad: i32,
    pub seq_lens: *mut i32,
    pub block_offsets: *mut i32,
    pub window_starts: *mut i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvpage_csr_tables {
    pub struct_size: usize,
    pub indptr: *mut i32,
    pub indices: *mut i32,
    pub indices_capacity: usize,
    pub last_page_len: *mut i32,
    pub seq_lens: *mut i32,
    pub block_offsets: *mut i32,
    pub window_starts: *mut i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvpage_admission {
    pub struct_size: usize,
    pub cached_tokens: i64,
    pub blocks_needed: i64,
    pub blocks_available: i64,
    pub fits: i32,
}
