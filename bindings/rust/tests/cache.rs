// The crate against an installed libkvpage: the report's own tests through
// `compat`, then the safe API's reads, writes, errors and sharing.
use kvpage::compat::{CacheStrategy, KVCache};
use kvpage::{BlockFormat, Cache, Code, Compression, Config, DType, MatchOptions, Policy, Snapshot};

const HEADS: usize = 2;
const DIM: usize = 4;
const ELEMS: usize = HEADS * DIM;

/// Token t's keys are t + e / 100, its values the negation.
fn tokens(first: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let k: Vec<f32> = (0..n * ELEMS)
        .map(|i| (first + i / ELEMS) as f32 + (i % ELEMS) as f32 / 100.0)
        .collect();
    let v = k.iter().map(|x| -x).collect();
    (k, v)
}

fn small(policy: Policy, max_seq_len: usize) -> Cache {
    Cache::new(&Config {
        num_layers: 2,
        num_kv_heads: HEADS,
        head_dim: DIM,
        dtype: DType::F32,
        block_tokens: 4,
        num_blocks: 64,
        max_seq_len,
        policy,
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn report_five_then_three_tokens() {
    let mut cache = KVCache::new(2, HEADS, DIM, 64, CacheStrategy::Error).unwrap();
    let (k, v) = tokens(0, 5);
    cache.update(0, &k, &v, 5).unwrap();
    let (k, v) = tokens(5, 3);
    cache.update(0, &k, &v, 8).unwrap();
    assert_eq!(cache.current_len(), 8);
    assert_eq!(cache.cached_tokens(0).unwrap(), 8);
    let (ks, vs) = cache.get_cache_for_attention(0).unwrap();
    assert_eq!(ks.len(), 8 * ELEMS);
    assert_eq!(ks[7 * ELEMS], 7.0);
    assert_eq!(vs[7 * ELEMS + 1], -7.01);
}

#[test]
fn report_fifteen_tokens_into_a_window_of_ten() {
    let mut cache = KVCache::new(1, HEADS, DIM, 10, CacheStrategy::SlidingWindow).unwrap();
    let (k, v) = tokens(0, 15);
    cache.update(0, &k, &v, 15).unwrap();
    assert_eq!(cache.cached_tokens(0).unwrap(), 10);
    assert_eq!(cache.current_len(), 15);
    let stats = cache.get_cache_stats();
    assert_eq!(stats.evictions, 5);
    assert_eq!(stats.current_length, 15);
    let (ks, _) = cache.get_cache_for_attention(0).unwrap();
    assert_eq!(ks[0], 5.0); // the oldest visible token
}

#[test]
fn compat_strategies_errors_and_compression() {
    let mut cache = KVCache::new(1, HEADS, DIM, 8, CacheStrategy::Error).unwrap();
    let (k, v) = tokens(0, 9);
    let err = cache.update(0, &k, &v, 9).unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted);
    assert_eq!(cache.current_len(), 0); // refused: nothing changed
    let mut shift = KVCache::new(1, HEADS, DIM, 8, CacheStrategy::Truncate).unwrap();
    shift.update(0, &k, &v, 9).unwrap();
    assert_eq!(shift.cached_tokens(0).unwrap(), 4); // shifted down to 8 / 2

    let mut big = KVCache::new(1, HEADS, DIM, 256, CacheStrategy::Error).unwrap();
    let (k, v) = tokens(0, 64);
    big.update(0, &k, &v, 64).unwrap();
    assert_eq!(big.compress_old_entries(0, 1.5).unwrap_err().code, Code::InvalidArgument);
    big.compress_old_entries(0, 0.5).unwrap();
    let stats = big.get_cache_stats();
    assert_eq!(stats.compressions_applied, 2); // 32 oldest tokens: 2 blocks of 16
    assert!(stats.memory_usage_mb > 0.0);
    assert!((stats.utilization - 0.25).abs() < 1e-6);
    let (ks, _) = big.get_cache_for_attention(0).unwrap();
    // Decoded from int8: a channel's scale spans its block's 16 tokens (up
    // to 15.02 here), so within half a step, 15.02 / 127 / 2.
    assert!((ks[3 * ELEMS + 2] - 3.02).abs() < 0.06);
}

#[test]
fn views_read_the_pool_in_place() {
    let mut cache = small(Policy::Error, 64);
    let seq = cache.add_sequence().unwrap();
    let (k, v) = tokens(0, 10);
    cache.update(seq, 0, &k, &v, 10).unwrap();
    let view = cache.view(seq, 0).unwrap();
    assert_eq!(view.tokens(), 10);
    assert_eq!(view.length(), 10);
    let blocks: Vec<_> = view.blocks().collect();
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[2].first_position(), 8);
    let (ks, vs, stride) = blocks[1].f32_slices().unwrap();
    assert_eq!(ks[0], 4.0);
    assert_eq!(ks[stride + 3], 5.03);
    assert_eq!(vs[0], -4.0);
    let (dk, _) = blocks[2].dequantize().unwrap();
    assert_eq!(dk[ELEMS], 9.0);
    let out = view.attend(&vec![1.0; ELEMS]).unwrap();
    assert!(out[0] < -8.0);
    assert_eq!(view.attend(&[1.0; 3]).unwrap_err().code, Code::InvalidArgument);
    let g = cache.gather(seq, 0).unwrap();
    assert_eq!(g.positions, (0..10).collect::<Vec<i64>>());
    assert_eq!(g.k, k);
    assert_eq!(cache.gather(seq, 1).unwrap().positions.len(), 0);
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let mut cache = small(Policy::Error, 64);
    let seq = cache.add_sequence().unwrap();
    let (k, v) = tokens(0, 6);
    cache.update(seq, 0, &k, &v, 6).unwrap();
    let before = (cache.stats(), cache.gather(seq, 0).unwrap(), cache.sequence_stats(seq).unwrap());
    let (k2, v2) = tokens(6, 2);
    let cases = [
        (cache.update(seq, 0, &k2, &v2[..ELEMS], 8), Code::InvalidArgument), // k, v differ
        (cache.update(seq, 0, &k2[..5], &v2[..5], 8), Code::InvalidArgument), // not whole tokens
        (cache.update(seq, 0, &k2, &v2, 9), Code::InvalidArgument),          // a gap
        (cache.update(seq, 7, &k2, &v2, 8), Code::InvalidArgument),          // no such layer
        (cache.update(seq, 0, &k2, &v2, 1 << 40), Code::InvalidArgument),    // gap, huge
        (cache.update(999, 0, &k2, &v2, 8), Code::NotFound),
        (cache.update(seq, 0, &k2, &v2, usize::MAX), Code::InvalidArgument), // too large
        (cache.update_bits(seq, 0, &[0u16; ELEMS], &[0u16; ELEMS], 7), Code::InvalidArgument),
        (cache.truncate(999, 0), Code::NotFound),
        (cache.compress_old_entries(seq, 0, 0.5), Code::FailedPrecondition),
        (cache.remove_sequence(999), Code::NotFound),
    ];
    for (i, (result, code)) in cases.into_iter().enumerate() {
        let err = result.unwrap_err();
        assert_eq!(err.code, code, "case {}: {}", i, err);
        assert!(!err.message.is_empty());
    }
    assert_eq!(cache.fork(999).unwrap_err().code, Code::NotFound);
    assert_eq!(cache.view(seq, 9).unwrap_err().code, Code::InvalidArgument);
    assert_eq!(cache.length(999, 0).unwrap_err().code, Code::NotFound);
    let after = (cache.stats(), cache.gather(seq, 0).unwrap(), cache.sequence_stats(seq).unwrap());
    assert_eq!(format!("{:?}", before), format!("{:?}", after));
    let err = Cache::new(&Config { head_dim: 0, ..Config::default() }).err().unwrap();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("head_dim"), "{}", err);
    assert!(format!("{}", err).starts_with("InvalidArgument: "));
    cache.validate().unwrap();
}

#[test]
fn forks_truncation_prefixes_and_snapshots() {
    let mut cache = small(Policy::Error, 64);
    let a = cache.add_sequence().unwrap();
    for layer in 0..2 {
        let (k, v) = tokens(0, 8);
        cache.update(a, layer, &k, &v, 8).unwrap();
    }
    let ids: Vec<i32> = (100..108).collect();
    cache.append_tokens(a, &ids).unwrap();
    let leave = MatchOptions { leave_last_token: true };
    assert_eq!(cache.cached_prefix_tokens_with(&ids, 0, leave).unwrap(), 4);
    let e = cache.add_sequence().unwrap();
    assert_eq!(cache.match_prefix_with(e, &ids, leave).unwrap(), 4);
    cache.remove_sequence(e).unwrap();
    let b = cache.add_sequence().unwrap();
    assert_eq!(cache.match_prefix(b, &ids).unwrap(), 8);
    let salted = cache.add_sequence_with_salt(9).unwrap();
    assert_eq!(cache.match_prefix(salted, &ids).unwrap(), 0);
    let child = cache.fork(a).unwrap();
    cache.truncate(child, 3).unwrap();
    assert_eq!(cache.length(child, 1).unwrap(), 3);
    assert_eq!(cache.length(a, 1).unwrap(), 8);
    assert_eq!(cache.sequences(), vec![a, b, salted, child]);
    assert_eq!(cache.stats().hits, 3);
    cache.remove_sequence(child).unwrap();
    cache.validate().unwrap();

    let path = std::env::temp_dir().join(format!("kvpage_rust_{}.snap", std::process::id()));
    cache.write_snapshot(&path, true).unwrap();
    let snap = Snapshot::read(&path).unwrap();
    snap.verify().unwrap();
    assert_eq!(snap.stats().sequences, 3);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(Snapshot::read(&path).err().unwrap().code, Code::NotFound);
}

#[test]
fn compressed_blocks_decode_through_the_view() {
    let mut cache = Cache::new(&Config {
        num_layers: 1,
        num_kv_heads: HEADS,
        head_dim: DIM,
        dtype: DType::F16,
        block_tokens: 4,
        num_blocks: 32,
        max_seq_len: 64,
        compression: Some(Compression {
            bits: 4,
            group_size: DIM,
            hot_tokens: 4,
            quant_cells: 32,
            auto_compress: true,
            max_rel_error: 0.0,
            measure_error: true,
        }),
        ..Config::default()
    })
    .unwrap();
    let seq = cache.add_sequence().unwrap();
    let (k, v) = tokens(0, 12);
    cache.update(seq, 0, &k, &v, 12).unwrap();
    let view = cache.view(seq, 0).unwrap();
    let first = view.blocks().next().unwrap();
    assert_eq!(first.format(), BlockFormat::Int4);
    assert!(first.f32_slices().is_none());
    let (dk, _) = first.dequantize().unwrap();
    assert!((dk[ELEMS] - 1.0).abs() < 0.1);
    assert!(cache.stats().mean_quant_error > 0.0);
}

#[test]
fn the_cache_may_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Cache>();
    assert_send::<KVCache>();
    let mut cache = small(Policy::SlidingWindow, 8);
    let seq = cache.add_sequence().unwrap();
    let handle = std::thread::spawn(move || {
        let (k, v) = tokens(0, 20);
        cache.update(seq, 0, &k, &v, 20).unwrap();
        cache
    });
    let cache = handle.join().unwrap();
    assert_eq!(cache.view(seq, 0).unwrap().tokens(), 8);
    assert!(kvpage::version().starts_with("0."));
}

#[test]
fn prefix_hash_matches_the_documented_vectors() {
    let ids: Vec<i32> = (1..=32).collect();
    let first = kvpage::prefix_block_hash(0, 0, &ids[..16]);
    assert_eq!(first, 0xa53e_a810_e69a_dced);
    assert_eq!(kvpage::prefix_block_hash(first, 0, &ids[16..]), 0xacc0_109a_8f01_65a4);
    assert_eq!(kvpage::prefix_block_hash(0, 42, &ids[..16]), 0x2f29_07c3_e36c_d564);
}

#[test]
fn engine_mode_reserve_write_and_read_through_tables() {
    let mut cache = small(Policy::Error, 64);
    let seqs = [cache.add_sequence().unwrap(), cache.add_sequence().unwrap()];
    let mut tables = kvpage::BlockTables::new(2, 8, -1);
    let base = cache.layer_base(0).unwrap() as *mut f32;
    let block_floats = 2 * 4 * ELEMS;
    let mut len = 0usize;
    for step in 0..9 {
        let n = if step == 0 { 3 } else { 1 };
        let requests: Vec<_> = seqs.iter().map(|&s| (s, len + n, n)).collect();
        let slots = cache.reserve_batch(0, &requests, Some(&mut tables)).unwrap();
        assert_eq!(slots.len(), 2 * n);
        for (i, &slot) in slots.iter().enumerate() {
            let (k, v) = tokens(len + i % n + 100 * (i / n), 1);
            let block = slot as usize / 4;
            let s = slot as usize % 4;
            // SAFETY: the slot lies in the pool at layer_base (host arena).
            unsafe {
                let at = base.add(block * block_floats);
                std::ptr::copy_nonoverlapping(k.as_ptr(), at.add(s * ELEMS), ELEMS);
                std::ptr::copy_nonoverlapping(v.as_ptr(), at.add((4 + s) * ELEMS), ELEMS);
            }
        }
        len += n;
    }
    assert_eq!(tables.seq_lens, vec![len as i32; 2]);
    for (i, &seq) in seqs.iter().enumerate() {
        let g = cache.gather(seq, 0).unwrap();
        let (k, _) = tokens(100 * i, len);
        assert_eq!(g.k, k);
        let row: Vec<i32> = tables.row(i).iter().copied().filter(|&b| b >= 0).collect();
        assert_eq!(row.len(), (len + 3) / 4);
    }
    let mut fresh = kvpage::BlockTables::new(2, 8, -1);
    cache.export_block_tables(0, &seqs, &mut fresh).unwrap();
    assert_eq!(fresh.block_table, tables.block_table);
    // Lookahead: 2 drafts, none accepted.
    cache.reserve(seqs[0], 0, len + 2, 2).unwrap();
    cache.reserve(seqs[0], 0, len, 0).unwrap();
    assert_eq!(cache.length(seqs[0], 0).unwrap(), len);
    assert_eq!(cache.reserve(seqs[0], 0, len + 5, 1).unwrap_err().code, Code::InvalidArgument);
    assert_eq!(cache.reserve(seqs[0], 0, usize::MAX / 2, usize::MAX / 2).unwrap_err().code, Code::InvalidArgument);
    let plan = cache.plan_admission(&[1, 2, 3, 4, 5, 6, 7, 8], 0, 8).unwrap();
    assert_eq!((plan.cached_tokens, plan.blocks_needed, plan.fits), (0, 8, true));
    assert_eq!(cache.cached_prefix_tokens(&[1, 2, 3, 4], 0).unwrap(), 0);
    let fresh_seq = cache.add_sequence().unwrap();
    assert_eq!(cache.blocks_needed(fresh_seq, 8, 8).unwrap(), 4); // 2 per layer
    assert_eq!(cache.blocks_needed(seqs[1], len, 0).unwrap_err().code, Code::InvalidArgument); // layer 1: a gap
    cache.validate().unwrap();
}

#[test]
fn layer_groups_reserve_once_for_every_layer() {
    let mut cache = Cache::new(&Config {
        num_layers: 3,
        num_kv_heads: HEADS,
        head_dim: DIM,
        dtype: DType::F32,
        block_tokens: 4,
        num_blocks: 16,
        max_seq_len: 64,
        group_layers: true,
        ..Config::default()
    })
    .unwrap();
    assert_eq!(cache.layer_group(2).unwrap(), kvpage::LayerGroup { group: 0, slot: 2, layers: 3 });
    assert_eq!(cache.layer_group(3).unwrap_err().code, Code::InvalidArgument);
    let block_floats = 2 * 4 * ELEMS;
    let base0 = cache.layer_base(0).unwrap() as *mut f32;
    let base2 = cache.layer_base(2).unwrap() as *mut f32;
    // SAFETY: both lie in one arena of 3 slots of 16 blocks.
    assert_eq!(unsafe { base2.offset_from(base0) }, (2 * 16 * block_floats) as isize);
    let seq = cache.add_sequence().unwrap();
    let slots = cache.reserve(seq, 1, 6, 6).unwrap();
    for layer in 0..3 {
        assert_eq!(cache.length(seq, layer).unwrap(), 6);
        let base = cache.layer_base(layer).unwrap() as *mut f32;
        for (i, &slot) in slots.iter().enumerate() {
            let (k, v) = tokens(100 * layer + i, 1);
            let (block, s) = (slot as usize / 4, slot as usize % 4);
            // SAFETY: the slot lies in this layer's part of the arena.
            unsafe {
                let at = base.add(block * block_floats);
                std::ptr::copy_nonoverlapping(k.as_ptr(), at.add(s * ELEMS), ELEMS);
                std::ptr::copy_nonoverlapping(v.as_ptr(), at.add((4 + s) * ELEMS), ELEMS);
            }
        }
    }
    for layer in 0..3 {
        let (k, _) = tokens(100 * layer, 6);
        assert_eq!(cache.gather(seq, layer).unwrap().k, k);
    }
    assert_eq!(cache.stats().blocks_used, 2); // one per 4 tokens, not per layer
    cache.validate().unwrap();
}
