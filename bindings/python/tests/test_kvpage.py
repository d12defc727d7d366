"""The Python module against the C API: reads, writes, zero-copy views and
their generation check, errors as Python exceptions, and that a refused call
changes nothing."""
import os
import tempfile

import numpy as np
import pytest

import kvpage

HEADS, DIM = 2, 4


def tokens(first, n, dtype=np.float32):
    """Token t's keys are t + e / 100, its values the negation."""
    t = np.arange(first, first + n, dtype=np.float64)[:, None, None]
    e = np.arange(HEADS * DIM, dtype=np.float64).reshape(1, HEADS, DIM) / 100
    k = (t + e).astype(dtype)
    return k, (-k).astype(dtype)


def small(**kw):
    args = dict(num_layers=2, num_kv_heads=HEADS, head_dim=DIM, dtype="f32",
                block_tokens=4, num_blocks=64, max_seq_len=64)
    args.update(kw)
    return kvpage.Cache(**args)


def test_update_gather_and_lengths():
    c = small()
    seq = c.add_sequence()
    k, v = tokens(0, 10)
    c.update(seq, 0, k, v, 10)
    assert c.length(seq, 0) == 10 and c.length(seq, 1) == 0
    gk, gv, pos = c.gather(seq, 0)
    assert gk.shape == (10, HEADS, DIM) and gk.dtype == np.float32
    np.testing.assert_array_equal(gk, k)
    np.testing.assert_array_equal(gv, v)
    assert list(pos) == list(range(10))
    assert c.sequences() == [seq]
    st = c.stats()
    assert st["tokens_stored"] == 10 and st["sequences"] == 1
    assert c.sequence_stats(seq)["current_length"] == 10
    c.validate()


def test_view_aliases_the_pool_and_refuses_to_be_read_after_a_change():
    c = small()
    seq = c.add_sequence()
    k, v = tokens(0, 10)
    c.update(seq, 0, k, v, 10)
    view = c.view(seq, 0)
    assert view.tokens == 10 and view.length == 10
    blocks = view.blocks
    assert [b.first_position for b in blocks] == [0, 4, 8]
    keys = blocks[1].k
    assert keys.shape == (4, HEADS, DIM)
    np.testing.assert_array_equal(keys, k[4:8])
    assert not keys.flags.writeable
    assert not keys.flags.owndata          # zero-copy: over the pool
    dk, dv = blocks[2].dequantize()
    np.testing.assert_array_equal(dk, k[8:10])
    c.update(seq, 0, *tokens(10, 1), 11)    # a change
    with pytest.raises(kvpage.FailedPreconditionError, match="take a new view"):
        view.blocks
    with pytest.raises(kvpage.FailedPreconditionError):
        blocks[0].k
    assert c.view(seq, 0).tokens == 11


def test_float16_and_bfloat16_bits_are_written_in_place():
    c = small(dtype="f16")
    seq = c.add_sequence()
    k, v = tokens(0, 3, np.float16)
    c.update(seq, 0, k, v, 3)
    block = c.view(seq, 0).blocks[0]
    assert block.k.dtype == np.float16
    np.testing.assert_array_equal(block.k, k)
    b = small(dtype="bf16")
    seq = b.add_sequence()
    bits = np.full((2, HEADS, DIM), 0x3F80, np.uint16)  # bf16 1.0
    b.update(seq, 0, bits, bits, 2)
    gk, _, _ = b.gather(seq, 0)
    assert (gk == 1.0).all()
    with pytest.raises(kvpage.InvalidArgumentError, match="dtype"):
        b.update(seq, 0, bits.astype(np.float16), bits.astype(np.float16), 4)


def test_errors_follow_the_status_code_and_change_nothing():
    c = small()
    seq = c.add_sequence()
    c.update(seq, 0, *tokens(0, 6), 6)
    before = (c.stats(), c.gather(seq, 0)[0].tobytes(), c.sequence_stats(seq))
    k, v = tokens(6, 2)
    with pytest.raises(kvpage.NotFoundError) as e:
        c.update(999, 0, k, v, 8)
    assert isinstance(e.value, KeyError) and e.value.code == "NOT_FOUND"
    with pytest.raises(ValueError, match="shape"):
        c.update(seq, 0, k.reshape(2, DIM, HEADS), v, 8)
    with pytest.raises(ValueError, match="shape"):
        c.update(seq, 0, k[0], v[0], 8)
    with pytest.raises(ValueError, match="dtype"):
        c.update(seq, 0, k.astype(np.float64), v, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        c.update(seq, 0, np.asfortranarray(k), v, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        c.update(seq, 0, tokens(0, 4)[0][::2], v, 8)
    with pytest.raises(kvpage.InvalidArgumentError):
        c.update(seq, 0, k, v, 9)                       # a gap
    with pytest.raises(kvpage.InvalidArgumentError):
        c.update(seq, 0, k, v, -1)
    with pytest.raises(kvpage.ResourceExhaustedError) as e:
        c.update(seq, 0, *tokens(6, 100), 106)          # past max_seq_len
    assert isinstance(e.value, MemoryError)
    with pytest.raises((OverflowError, TypeError)):
        c.update(seq, 0, k, v, 1 << 70)                 # not an int64
    with pytest.raises(kvpage.FailedPreconditionError):
        c.compress_old_entries(seq, 0, 0.5)             # no compression
    with pytest.raises(KeyError):
        c.truncate(999, 0)
    with pytest.raises(kvpage.InvalidArgumentError):
        c.view(seq, 7)
    after = (c.stats(), c.gather(seq, 0)[0].tobytes(), c.sequence_stats(seq))
    assert before[1:] == after[1:]
    assert before[0] == after[0]
    with pytest.raises(ValueError, match="head_dim"):
        kvpage.Cache(num_layers=1, num_kv_heads=1, head_dim=0,
                     num_blocks=4, max_seq_len=8)
    with pytest.raises(ValueError, match="policy"):
        small(policy="lru")
    with pytest.raises(ValueError, match="no field"):
        small(compression={"bitz": 8})


def test_forks_prefixes_compression_and_snapshots():
    c = small(compression={"bits": 8, "group_size": DIM, "hot_tokens": 4,
                           "quant_cells": 32, "measure_error": True})
    a = c.add_sequence()
    for layer in range(2):
        c.update(a, layer, *tokens(0, 8), 8)
    ids = list(range(100, 108))
    c.append_tokens(a, ids)
    assert c.cached_prefix_tokens(ids, leave_last_token=True) == 4
    assert c.cached_prefix_tokens(ids) == 8
    e = c.add_sequence()
    assert c.match_prefix(e, ids, leave_last_token=True) == 4
    c.remove_sequence(e)
    b = c.add_sequence()
    assert c.match_prefix(b, ids) == 8
    child = c.fork(a)
    c.truncate(child, 3)
    assert c.length(child, 1) == 3 and c.length(a, 1) == 8
    c.remove_sequence(child)
    d = c.add_sequence(salt=5)
    assert c.match_prefix(d, ids) == 0
    c.update(d, 0, *tokens(0, 8), 8)
    c.compress_old_entries(d, 0, 0.0)
    first = c.view(d, 0).blocks[0]
    assert first.format == "int8" and first.k is None
    dk, _ = first.dequantize()
    np.testing.assert_allclose(dk, tokens(0, 4)[0], atol=0.02)
    st = c.stats()
    assert st["hits"] == 3 and st["quant_blocks_int8"] == 1
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kv.snap")
        c.write_snapshot(path, include_token_data=True)
        assert kvpage.verify_snapshot(path)["sequences"] == 3
    with pytest.raises(kvpage.NotFoundError):
        kvpage.verify_snapshot("/nonexistent.snap")


def test_prefix_hash_matches_the_documented_vectors():
    first = kvpage.prefix_block_hash(0, 0, list(range(1, 17)))
    assert first == 0xa53ea810e69adced
    assert kvpage.prefix_block_hash(first, 0, list(range(17, 33))) == 0xacc0109a8f0165a4
    assert kvpage.prefix_block_hash(0, 42, list(range(1, 17))) == 0x2f2907c3e36cd564


def test_a_refused_call_leaves_views_valid_and_byte_order_is_checked():
    c = small()
    seq = c.add_sequence()
    c.update(seq, 0, *tokens(0, 4), 4)
    view = c.view(seq, 0)
    with pytest.raises(kvpage.InvalidArgumentError):
        c.update(seq, 0, *tokens(9, 1), 10)      # a gap: refused
    assert view.tokens == 4                      # still valid
    k, v = tokens(4, 1)
    with pytest.raises(ValueError, match="byte order"):
        c.update(seq, 0, k.astype(">f4"), v.astype(">f4"), 5)
    c.update(seq, 0, k.astype("<f4"), v.astype("<f4"), 5)


def test_threads_may_share_a_cache():
    import threading
    c = small(num_blocks=256, max_seq_len=4096)
    seqs = [c.add_sequence() for _ in range(4)]
    errors = []

    def work(seq):
        try:
            for n in range(1, 200):
                c.update(seq, 0, *tokens(n - 1, 1), n)
                c.gather(seq, 0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in seqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for s in seqs:
        assert c.length(s, 0) == 199
    c.validate()


def test_engine_mode_reserve_write_read_through_tables():
    """The engine's "kernel" writes at the slots kvpage hands out, into the
    pool at layer_base; the exported tables read every token back."""
    import ctypes
    c = small(num_layers=1)
    seqs = [c.add_sequence() for _ in range(3)]
    table = np.full((3, 8), -1, np.int32)
    lens = np.zeros(3, np.int32)
    pool = np.ctypeslib.as_array(
        (ctypes.c_float * (64 * 2 * 4 * HEADS * DIM)).from_address(
            c.layer_base(0))).reshape(64, 2, 4, HEADS, DIM)
    length = 0
    for step in range(10):
        n = 5 if step == 0 else 1
        slots = c.reserve_batch(0, seqs, [length + n] * 3, [n] * 3,
                                block_table=table, table_lens=lens, pad=-1)
        assert slots.dtype == np.int64 and slots.shape == (3 * n,)
        for i in range(3):
            k, v = tokens(length + 100 * i, n)
            for t in range(n):
                slot = slots[i * n + t]
                pool[slot // 4, 0, slot % 4] = k[t]
                pool[slot // 4, 1, slot % 4] = v[t]
        length += n
    assert list(lens) == [length] * 3
    for i, seq in enumerate(seqs):
        gk, gv, pos = c.gather(seq, 0)
        k, v = tokens(100 * i, length)
        np.testing.assert_array_equal(gk, k)
        row = [b for b in table[i] if b >= 0]
        read = np.concatenate([pool[b, 0] for b in row])[:length]
        np.testing.assert_array_equal(read, k)
    padded, plens, offsets, starts = c.export_block_tables(0, seqs, 8, pad=-1)
    np.testing.assert_array_equal(padded, table)
    indptr, indices, last, clens, _, _ = c.export_block_tables_csr(0, seqs)
    assert list(indptr) == [0, 4, 8, 12] and list(last) == [2, 2, 2]  # 14
    np.testing.assert_array_equal(indices[4:8], table[1, :4])
    # Lookahead: 3 drafts, 1 accepted.
    c.reserve(seqs[0], 0, length + 3, 3)
    c.reserve(seqs[0], 0, length + 1, 0)
    assert c.length(seqs[0], 0) == length + 1
    with pytest.raises(kvpage.InvalidArgumentError):
        c.reserve(seqs[0], 0, length + 9, 1)  # a gap
    with pytest.raises(kvpage.InvalidArgumentError):
        c.reserve_batch(0, seqs, [1], [1])
    with pytest.raises(kvpage.InvalidArgumentError):  # not int32
        c.reserve_batch(0, seqs[:1], [length + 2], [1],
                        block_table=np.zeros((1, 8)), table_lens=lens)
    # What a scheduler asks.
    assert c.blocks_needed(seqs[1], length + 16, 16) == 4
    plan = c.plan_admission(list(range(12)), extra_tokens=4)
    assert plan["cached_tokens"] == 0 and plan["blocks_needed"] == 4
    assert plan["fits"] is True
    assert c.cached_prefix_tokens(list(range(12))) == 0
    c.validate()


def test_engine_mode_tables_of_a_window_keep_their_offsets():
    c = kvpage.Cache(num_layers=1, num_kv_heads=HEADS, head_dim=DIM,
                     dtype="f32", block_tokens=4, num_blocks=16,
                     max_seq_len=8, policy="sliding_window")
    seq = c.add_sequence()
    table = np.full((1, 4), -1, np.int32)
    lens, offsets, starts = (np.zeros(1, np.int32) for _ in range(3))
    for length in range(1, 21):
        c.reserve_batch(0, [seq], [length], [1], block_table=table,
                        table_lens=lens, table_offsets=offsets,
                        table_window_starts=starts)
    _, _, want_offsets, want_starts = c.export_block_tables(0, [seq], 4)
    assert lens[0] == 20 and starts[0] == 12 and offsets[0] == 3
    assert offsets[0] == want_offsets[0] and starts[0] == want_starts[0]


def test_layer_groups_reserve_once_for_every_layer():
    """With group_layers every layer shares one table: one reservation, and
    each layer's kernel writes its own slot of the storage."""
    import ctypes
    c = small(num_layers=3, num_blocks=16, group_layers=True)
    assert c.layer_group(2) == (0, 2, 3)
    with pytest.raises(kvpage.InvalidArgumentError):
        c.layer_group(3)
    pool = np.ctypeslib.as_array(
        (ctypes.c_float * (3 * 16 * 2 * 4 * HEADS * DIM)).from_address(
            c.layer_base(0))).reshape(3, 16, 2, 4, HEADS, DIM)
    assert c.layer_base(1) - c.layer_base(0) == 16 * 2 * 4 * HEADS * DIM * 4
    seq = c.add_sequence()
    slots = c.reserve(seq, 0, 6, 6)
    for layer in range(3):
        k, v = tokens(100 * layer, 6)
        for t, slot in enumerate(slots):
            pool[layer, slot // 4, 0, slot % 4] = k[t]
            pool[layer, slot // 4, 1, slot % 4] = v[t]
    for layer in range(3):
        assert c.length(seq, layer) == 6
        gk, _, _ = c.gather(seq, layer)
        np.testing.assert_array_equal(gk, tokens(100 * layer, 6)[0])
    assert c.stats()["blocks_used"] == 2
    c.validate()
