#!/usr/bin/env python3
"""vLLM v1's KV-cache block manager, rewritten, and timed on kvpage's workload.

This is a peer benchmark: bench/engine_bench.cc measures kvpage's engine-mode
bookkeeping, this file measures the same workload on a re-implementation of
the block manager of vLLM v1 (the Python code the vLLM scheduler runs for every
request, every step), so that both sets of figures come out of one run.

Provenance. No vLLM code is copied here. The algorithm was learnt by reading
these files of github.com/vllm-project/vllm and then written again, with our
own names and layout (the stored copy of vLLM's source holds one version per
file, not one tree, and the whole repository was too large to fetch, so the
files come from these commits; their interfaces agree with each other):

  vllm/v1/core/kv_cache_manager.py            003df2961dd8830c317a61f9745ccd557da9fa06
  vllm/v1/core/kv_cache_utils.py              003df2961dd8830c317a61f9745ccd557da9fa06
  vllm/v1/core/block_pool.py                  c59cb7941357443da7c5eef75cfa8697d683d228
  vllm/v1/core/single_type_kv_cache_manager.py 00b08dc44519a82cbdd9061d92d1226985094622
  vllm/v1/core/kv_cache_coordinator.py        00b08dc44519a82cbdd9061d92d1226985094622
  vllm/v1/worker/block_table.py               01edfd091847f63b5db913c293f4834c823dac40
  and, for the per-token hashing, Request.append_output_token_ids of
  vllm/v1/request.py and the "sha256" default of vllm/config/cache.py.

(block_pool.py at c59cb79 predates the block_mask argument that the
single-type manager at 00b08dc passes to cache_full_blocks; for full attention
that mask is None, "cache every block", which is what is done here.)

What is the same as vLLM (per operation, the same work):
  * one KVCacheBlock object per block: block_id, ref_cnt, the hash key (read
    through a property, as in vLLM), prev/next free-list pointers, is_null;
    block 0 is the null block, taken out of the free list at start;
  * the free list is a doubly linked list threaded through the blocks, with
    a sentinel head and tail: popleft_n for allocation, remove() of a middle
    block when a cache hit revives a free block (touch), append_n / prepend_n
    on free (freed blocks without a hash go to the front, cached ones to the
    back, in the order given);
  * the prefix-cache index is a dict from (block hash + 4-byte group id) to a
    block, or to a {block_id: block} dict when several blocks share a hash;
  * block hashes: sha256 over pickle.dumps((parent hash, tuple(token ids),
    extra keys)), the parent of the first block being a random 32-byte
    NONE_HASH (or derived from PYTHONHASHSEED). This is vLLM's default
    ("sha256", pickle then hashlib.sha256) in the version read; the builtin
    hash() mode of older releases is gone there. As in vLLM, a request hashes
    its full blocks when it is created and every time a token completes a
    block (append_output_token_ids), and allocate_slots only indexes them;
  * allocate_slots: blocks needed = cdiv(computed + new + lookahead,
    block_size) - held (the fast path for a running request), the capacity
    check, touch() of the prefix hits of a new request, popleft of new blocks
    with eviction of the hash each one still carries, then caching of the
    newly full blocks; get_computed_blocks walks the chain of the request's
    block hashes until the first miss (at most num_tokens - 1 tokens); free()
    returns a request's blocks in reverse order, so its tail is evicted first;
  * the layering (manager -> coordinator -> single-type manager -> pool), the
    per-request block list, the KVCacheBlocks-like result and its
    get_block_ids(allow_none=True), and the asserts vLLM keeps on these paths
    (they run in vLLM too, unless Python runs with -O).

What is simplified (none of it costs time per request-step in vLLM with the
configuration modelled: one full-attention group, prefix caching on, no
speculative decoding, no KV connector, no LoRA/multimodal inputs):
  * one full-attention KV cache group (vLLM's unitary coordinator); no
    sliding window, Mamba, cross-attention or hybrid groups, no DCP/PCP;
  * no KV cache events, no metrics collector and no prefix-cache stats (vLLM
    tests `if metrics_collector` per block and `if enable_kv_cache_events`
    per call; those tests are kept, the work behind them is not);
  * no EAGLE/MTP, no partial (sub-block) hits and copy-on-write, no external
    (connector) tokens, no watermark (vLLM's default is 0), no zeroing of new
    blocks, no preemption (the pool is large enough);
  * the extra keys of a block hash (LoRA name, multimodal hashes, cache salt,
    prompt embeddings) are looked for and found absent, as for a plain
    text request; Request's read-only ConstantList views are plain lists.

The model-runner side. For decode, vLLM's scheduler passes each running
request's new block ids (get_block_ids) to the model runner, which appends
them to its persistent, padded block table (BlockTable.append_row, a numpy
row) and computes the slot mapping, slot = block_id * block_size + offset.
vLLM does that slot mapping with numpy in the model runner (the v1 releases of
2025: BlockTable.compute_slot_mapping), and in the block_table.py read above
with a Triton kernel on the GPU. Here both are pure Python lists: a flat,
padded table (max_blocks entries per row) and one slot per request, so
request_step_ns is the manager's cost plus a Python table append and slot
mapping, and request_step_manager_only_ns is the manager alone.

Figures (each the median of --reps repetitions, with min and max):
  request_step_ns              per request-step: 256 requests decoding one
                               token each from 1000 tokens of context (the
                               prefill is not timed), over 64 steps, so a new
                               block every 16 steps: allocate_slots,
                               get_block_ids, the token's hashing, and the
                               table append and slot mapping
  request_step_manager_only_ns the same without the table and slot mapping
  allocate_ns_per_block        allocate_slots of new 2048-token requests (128
                               blocks each; their hashes were computed when
                               the requests were created), per block
  free_ns_per_block            the manager's free() of those requests
  admit_2k_with_1k_cached_us   admission of a request whose 2048-token prompt
                               shares 1024 tokens with a finished request:
                               the Request (hashing its 128 full blocks),
                               get_computed_blocks, allocate_slots for the
                               other 1024 tokens (touch, new blocks, caching)
  release_ns_per_block         a finished 2048-token request leaves: free(),
                               the scheduler's dict entry, and the model
                               runner's clear of its block-table row

The pool is "primed" before each timed loop (unless --cold-pool): every free
block carries a hash, as blocks do in a server that has run a while with
prefix caching, so each allocation also evicts a hash from the index, as it
would there. Time is wall-clock (time.perf_counter_ns), as in the C++
counterpart; --clock cpu takes time.process_time_ns instead. The garbage
collector is disabled (gc.disable()) during every timed loop and a
collection runs before it. Python 3.11 standard library only.

Usage:
  python3 bench/peers/vllm_v1_blocks.py               # default run, < 60 s
  python3 bench/peers/vllm_v1_blocks.py --quick       # < 5 s, for tests
  python3 bench/peers/vllm_v1_blocks.py --self-check  # asserts, no timing
"""

from __future__ import annotations

import argparse
import enum
import gc
import hashlib
import json
import os
import pickle
import platform
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from itertools import islice


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------
# Hashing (vLLM's default "sha256": pickle, then SHA-256).
# ---------------------------------------------------------------------------

def sha256_of(obj) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _root_hash() -> bytes:
    seed = os.getenv("PYTHONHASHSEED")
    return os.urandom(32) if seed is None else sha256_of(seed)


# The parent hash of every chain's first block; one per process, as in vLLM.
ROOT_HASH: bytes = _root_hash()


def chain_hash(hash_fn, parent: bytes | None, tokens, extra) -> bytes:
    """The hash of one full block: its tokens, its extra keys, its parent."""
    if not parent:
        parent = ROOT_HASH
    return hash_fn((parent, tuple(tokens), extra))


def with_group(block_hash: bytes, group_id: int) -> bytes:
    """The prefix-cache index key: the block hash and the group id."""
    return block_hash + group_id.to_bytes(4, "big", signed=False)


def block_extra_keys(request: "Request", start: int, end: int, mm_idx: int):
    """Extra hash inputs of a block. A plain text request has none, but the
    four sources are looked at, as in vLLM (multimodal features, LoRA, the
    cache salt of the first block, prompt embeddings)."""
    mm_keys: list = []
    features = request.mm_features
    if features:  # not modelled: the benchmark's requests are text only
        raise NotImplementedError("multimodal inputs are not modelled")
    lora_keys = [request.lora_request] if request.lora_request else []
    salt_keys = [request.cache_salt] if (start == 0 and request.cache_salt) else []
    embed_keys: list = []
    if request.prompt_embeds is not None:
        raise NotImplementedError("prompt embeddings are not modelled")
    keys = lora_keys + mm_keys + salt_keys + embed_keys
    if not keys:
        return None, mm_idx
    return tuple(keys), mm_idx


def make_block_hasher(block_size: int, hash_fn):
    """Returns f(request) -> the hashes of the request's full blocks that it
    has not hashed yet (an empty list, quickly, when no block was filled)."""

    def new_full_block_hashes(request: "Request") -> list:
        start = len(request.block_hashes) * block_size
        num_tokens = request.num_tokens
        if start + block_size > num_tokens:
            return []
        mm_idx = 0 if start == 0 else -1
        parent = request.block_hashes[-1] if request.block_hashes else None
        out = []
        tokens = request.all_token_ids
        while True:
            end = start + block_size
            if end > num_tokens:
                break
            extra, mm_idx = block_extra_keys(request, start, end, mm_idx)
            h = chain_hash(hash_fn, parent, tokens[start:end], extra)
            out.append(h)
            start = end
            parent = h
        return out

    return new_full_block_hashes


# ---------------------------------------------------------------------------
# Requests (the fields of vLLM's Request that the block manager reads).
# ---------------------------------------------------------------------------

class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED = enum.auto()


class Request:
    def __init__(self, request_id: str, prompt_token_ids: list, block_hasher=None):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.num_prompt_tokens = len(prompt_token_ids)
        self._output_token_ids: list = []
        # Shares the prompt list until the first generated token (vLLM does
        # the same to spare a copy of long prompts).
        self._all_token_ids = prompt_token_ids
        self._shares_prompt = True
        self.num_computed_tokens = 0
        self.num_in_flight_tokens = 0
        self.status = RequestStatus.WAITING
        self.skip_reading_prefix_cache = False
        self.mm_features: list = []
        self.lora_request = None
        self.cache_salt = None
        self.prompt_embeds = None
        self.block_hashes: list = []
        self._hash_new_blocks = None
        if block_hasher is not None:
            self._hash_new_blocks = partial(block_hasher, self)
            self.block_hashes = self._hash_new_blocks()

    @property
    def all_token_ids(self) -> list:
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    def append_output_token_ids(self, token_ids) -> None:
        if self._shares_prompt:
            self._all_token_ids = self._all_token_ids.copy()
            self._shares_prompt = False
        if isinstance(token_ids, int):
            self._output_token_ids.append(token_ids)
            self._all_token_ids.append(token_ids)
        else:
            self._output_token_ids.extend(token_ids)
            self._all_token_ids.extend(token_ids)
        if self._hash_new_blocks is not None:
            self.block_hashes.extend(self._hash_new_blocks())


# ---------------------------------------------------------------------------
# Blocks and the free list.
# ---------------------------------------------------------------------------

class KVCacheBlock:
    __slots__ = ("block_id", "ref_cnt", "_hash_key", "_hash_num_tokens",
                 "prev_free_block", "next_free_block", "is_null")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_cnt = 0
        self._hash_key: bytes | None = None
        self._hash_num_tokens: int | None = None
        self.prev_free_block: KVCacheBlock | None = None
        self.next_free_block: KVCacheBlock | None = None
        self.is_null = False

    @property
    def block_hash(self) -> bytes | None:
        return self._hash_key

    def set_block_hash(self, key: bytes, num_tokens: int | None = None) -> None:
        assert self._hash_key is None and self._hash_num_tokens is None, \
            "block already hashed"
        self._hash_key = key
        self._hash_num_tokens = num_tokens

    def reset_hash(self) -> None:
        self._hash_key = None
        self._hash_num_tokens = None

    def __repr__(self) -> str:
        return f"KVCacheBlock({self.block_id}, ref={self.ref_cnt})"


class FreeBlockQueue:
    """Free blocks in eviction order, linked through the blocks themselves
    (no node objects), between two sentinels that never leave the list."""

    def __init__(self, blocks: list):
        self.num_free_blocks = len(blocks)
        self.head = KVCacheBlock(-1)
        self.tail = KVCacheBlock(-1)
        prev = self.head
        for b in blocks:
            prev.next_free_block = b
            b.prev_free_block = prev
            prev = b
        prev.next_free_block = self.tail
        self.tail.prev_free_block = prev

    def popleft(self) -> KVCacheBlock:
        first = self.head.next_free_block
        if first is self.tail or first is None:
            assert self.num_free_blocks == 0
            raise ValueError("no free blocks")
        after = first.next_free_block
        if after is None:
            raise RuntimeError("a block in the free list has no successor")
        self.head.next_free_block = after
        after.prev_free_block = self.head
        first.prev_free_block = first.next_free_block = None
        self.num_free_blocks -= 1
        return first

    def popleft_n(self, n: int) -> list:
        if n == 0:
            return []
        assert self.num_free_blocks >= n
        self.num_free_blocks -= n
        taken = []
        cur = self.head.next_free_block
        for _ in range(n):
            assert cur is not None
            taken.append(cur)
            done = cur
            cur = cur.next_free_block
            done.prev_free_block = None
            done.next_free_block = None
        if cur is not None:
            self.head.next_free_block = cur
            cur.prev_free_block = self.head
        return taken

    def remove(self, block: KVCacheBlock) -> None:
        before, after = block.prev_free_block, block.next_free_block
        if before is None or after is None:
            raise RuntimeError(f"remove() of a block not in the free list: {block}")
        before.next_free_block = after
        after.prev_free_block = before
        block.prev_free_block = block.next_free_block = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        last = self.tail.prev_free_block
        if last is None:
            raise RuntimeError("the tail sentinel lost its predecessor")
        last.next_free_block = block
        block.prev_free_block = last
        block.next_free_block = self.tail
        self.tail.prev_free_block = block
        self.num_free_blocks += 1

    def append_n(self, blocks: list) -> None:
        if not blocks:
            return
        last = self.tail.prev_free_block
        assert last is not None
        for b in blocks:
            b.prev_free_block = last
            last.next_free_block = b
            last = b
        last.next_free_block = self.tail
        self.tail.prev_free_block = last
        self.num_free_blocks += len(blocks)

    def prepend_n(self, blocks: list) -> None:
        if not blocks:
            return
        first = self.head.next_free_block
        assert first is not None
        prev = self.head
        for b in blocks:
            b.prev_free_block = prev
            prev.next_free_block = b
            prev = b
        prev.next_free_block = first
        first.prev_free_block = prev
        self.num_free_blocks += len(blocks)

    def blocks_in_order(self) -> list:
        """Every free block, head first (for the self-check)."""
        out = []
        cur = self.head.next_free_block
        while cur is not None and cur is not self.tail:
            out.append(cur)
            cur = cur.next_free_block
        return out


class CachedBlockIndex:
    """Hash key -> block, or -> {block_id: block} when several full blocks
    were cached under one key (blocks are never de-duplicated, so that block
    tables stay append-only)."""

    def __init__(self):
        self._map: dict = {}

    def get_one(self, key: bytes):
        found = self._map.get(key)
        if found is None:
            return None
        if isinstance(found, KVCacheBlock):
            return found
        if isinstance(found, dict):
            return next(iter(found.values()))
        raise AssertionError(f"bad entry {type(found)}")

    def insert(self, key: bytes, block: KVCacheBlock) -> None:
        found = self._map.get(key)
        if found is None:
            self._map[key] = block
        elif isinstance(found, KVCacheBlock):
            self._map[key] = {found.block_id: found, block.block_id: block}
        elif isinstance(found, dict):
            found[block.block_id] = block
        else:
            raise AssertionError(f"bad entry {type(found)}")

    def pop(self, key: bytes, block_id: int):
        found = self._map.pop(key, None)
        if found is None:
            return None
        if isinstance(found, KVCacheBlock):
            if found.block_id == block_id:
                return found
            self._map[key] = found  # another block holds the key: keep it
            return None
        if isinstance(found, dict):
            block = found.pop(block_id, None)
            if found:
                self._map[key] = found
            return block
        raise AssertionError(f"bad entry {type(found)}")

    def __len__(self) -> int:
        return len(self._map)


# ---------------------------------------------------------------------------
# The pool.
# ---------------------------------------------------------------------------

class BlockPool:
    def __init__(self, num_blocks: int, hash_block_size: int, enable_caching: bool = True):
        assert num_blocks > 1
        self.num_blocks = num_blocks
        self.hash_block_size = hash_block_size
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.index = CachedBlockIndex()
        # Block 0 stands for "no block" (skipped positions); never freed.
        self.null_block = self.free_queue.popleft()
        self.null_block.is_null = True
        self.enable_kv_cache_events = False
        self.events: list = []
        self.metrics_collector = None

    def num_free(self) -> int:
        return self.free_queue.num_free_blocks

    def cached_block(self, block_hash: bytes, group_ids: list):
        """The cached block for each group, or None if any group misses."""
        found = []
        for gid in group_ids:
            block = self.index.get_one(with_group(block_hash, gid))
            if not block:
                return None
            found.append(block)
        return found

    def cache_full_blocks(self, request: Request, blocks: list, num_cached: int,
                          num_full: int, block_size: int, group_id: int) -> None:
        if num_cached >= num_full:
            return
        newly_full = blocks[num_cached:num_full]
        assert len(request.block_hashes) >= num_full
        assert block_size == self.hash_block_size  # one group: the common case
        hashes = request.block_hashes[num_cached:]
        event_hashes = [] if self.enable_kv_cache_events else None
        for i, blk in enumerate(newly_full):
            if blk.is_null:
                continue
            if blk.block_hash is not None:
                # A prefix hit, already in the index under this key.
                assert blk.block_hash == with_group(hashes[i], group_id)
                continue
            key = with_group(hashes[i], group_id)
            blk.set_block_hash(key)
            self.index.insert(key, blk)
            if event_hashes is not None:
                event_hashes.append(hashes[i])
        if self.enable_kv_cache_events:
            raise NotImplementedError("events are not modelled")

    def get_new_blocks(self, n: int) -> list:
        if n > self.num_free():
            raise ValueError(f"cannot get {n} free blocks")
        taken = self.free_queue.popleft_n(n)
        if self.enable_caching:
            for b in taken:
                self._evict_if_cached(b)
                assert b.ref_cnt == 0
                b.ref_cnt += 1
                if self.metrics_collector:
                    self.metrics_collector.on_block_allocated(b)
        else:
            for b in taken:
                assert b.ref_cnt == 0
                b.ref_cnt += 1
                if self.metrics_collector:
                    self.metrics_collector.on_block_allocated(b)
        return taken

    def _evict_if_cached(self, block: KVCacheBlock) -> bool:
        if self.metrics_collector:
            self.metrics_collector.on_block_evicted(block)
        key = block.block_hash
        if key is None:
            return False
        if self.index.pop(key, block.block_id) is None:
            return False
        block.reset_hash()
        return True

    def touch(self, blocks) -> None:
        """A cache hit: the blocks gain a reference; those that were free
        (ref 0, eviction candidates) leave the free list."""
        for b in blocks:
            if b.ref_cnt == 0 and not b.is_null:
                self.free_queue.remove(b)
            b.ref_cnt += 1
            if self.metrics_collector:
                self.metrics_collector.on_block_accessed(b)

    def free_blocks(self, ordered) -> None:
        """Drop one reference of each block; blocks left unreferenced return
        to the free list in the given order (the first to be evicted first):
        those without a hash at the front, cached ones at the back."""
        blocks = list(ordered)
        for b in blocks:
            b.ref_cnt -= 1
        released = [b for b in blocks if b.ref_cnt == 0 and not b.is_null]
        fresh = [b for b in released if b.block_hash is None]
        cached = [b for b in released if b.block_hash is not None]
        if fresh:
            self.free_queue.prepend_n(fresh)
        if cached:
            self.free_queue.append_n(cached)


# ---------------------------------------------------------------------------
# One full-attention group (vLLM's single-type manager).
# ---------------------------------------------------------------------------

class FullAttentionGroup:
    def __init__(self, block_size: int, pool: BlockPool, group_id: int, enable_caching: bool = True):
        self.block_size = block_size
        self.pool = pool
        self.group_id = group_id
        self.enable_caching = enable_caching
        self.null_block = pool.null_block
        self.req_to_blocks: defaultdict = defaultdict(list)
        self.num_cached_block: dict = {}
        self.partial_hit_reqs: dict = {}  # never filled: no sub-block hits
        self.record_new_block_ids = False
        self.new_block_ids: list = []

    def num_skipped_tokens(self, num_computed_tokens: int) -> int:
        return 0  # full attention keeps every token

    def blocks_to_allocate(self, request_id: str, num_tokens: int, new_computed: list,
                           total_computed_tokens: int, num_local_computed_tokens: int) -> int:
        required = cdiv(num_tokens, self.block_size)
        held = len(self.req_to_blocks.get(request_id, ()))
        if request_id in self.num_cached_block:
            # A running request: no new prefix hits, just the tail.
            assert len(new_computed) == 0
            return max(required - held, 0)
        skipped_blocks = self.num_skipped_tokens(total_computed_tokens) // self.block_size
        local_blocks = len(new_computed) + held
        new = max(required - max(skipped_blocks, local_blocks), 0)
        skip_in_new = max(0, skipped_blocks - held)
        # Hit blocks that sit in the free list count: touching them takes
        # them out of it.
        revived = sum(b.ref_cnt == 0 and not b.is_null for b in new_computed[skip_in_new:])
        if new_computed and num_local_computed_tokens % self.block_size != 0:
            new += 1  # not reached: hits are whole blocks here
        return new + revived

    def add_hit_blocks(self, request_id: str, new_computed: list,
                       num_local_computed_tokens: int) -> None:
        blocks = self.req_to_blocks[request_id]
        assert len(blocks) == 0
        skipped_blocks = self.num_skipped_tokens(num_local_computed_tokens) // self.block_size
        if skipped_blocks > 0:
            new_computed = new_computed[skipped_blocks:]
        if self.enable_caching:
            self.pool.touch(new_computed)
        blocks.extend([self.null_block] * skipped_blocks)
        blocks.extend(new_computed)
        self.num_cached_block[request_id] = len(blocks)

    def allocate_new_blocks(self, request_id: str, num_tokens: int) -> list:
        if request_id in self.partial_hit_reqs:
            raise NotImplementedError("partial hits are not modelled")
        blocks = self.req_to_blocks[request_id]
        need = cdiv(num_tokens, self.block_size) - len(blocks)
        if need <= 0:
            return []
        got = self.pool.get_new_blocks(need)
        blocks.extend(got)
        if self.record_new_block_ids:
            self.new_block_ids.extend(b.block_id for b in got)
        return got

    def cache_blocks(self, request: Request, num_tokens: int) -> None:
        num_cached = self.num_cached_block.get(request.request_id, 0)
        num_full = num_tokens // self.block_size
        if num_cached >= num_full:
            return
        self.pool.cache_full_blocks(request, self.req_to_blocks[request.request_id],
                                    num_cached, num_full, self.block_size, self.group_id)
        self.num_cached_block[request.request_id] = num_full

    def pop_blocks(self, request_id: str) -> list:
        blocks = self.req_to_blocks.pop(request_id, [])
        self.num_cached_block.pop(request_id, None)
        self.partial_hit_reqs.pop(request_id, None)
        return blocks

    def free(self, request_id: str) -> None:
        # Reverse order: the tail of the request is evicted first.
        self.pool.free_blocks(reversed(self.pop_blocks(request_id)))

    def remove_skipped_blocks(self, request_id: str, processed_tokens: int) -> None:
        if self.num_skipped_tokens(processed_tokens) <= 0:
            return
        raise NotImplementedError("only full attention is modelled")

    def longest_cache_hit(self, block_hashes: list, max_length: int, group_ids: list) -> tuple:
        hits = tuple([] for _ in group_ids)
        for h in islice(block_hashes, max_length // self.block_size):
            found = self.pool.cached_block(h, group_ids)
            if not found:
                break  # chained hashes: every later block misses too
            for lst, blk in zip(hits, found):
                lst.append(blk)
        hit_len = len(hits[0]) * self.block_size
        hit_len -= hit_len % self.block_size
        keep = cdiv(hit_len, self.block_size)
        for lst in hits:
            del lst[keep:]
        return hits, hit_len

    def new_step_starts(self) -> None:
        return None


# ---------------------------------------------------------------------------
# The coordinator for a single group, and the manager the scheduler calls.
# ---------------------------------------------------------------------------

class SingleGroupCoordinator:
    def __init__(self, block_size: int, num_blocks: int, max_model_len: int, enable_caching: bool = True):
        self.max_model_len = max_model_len
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, block_size, enable_caching)
        self.groups = (FullAttentionGroup(block_size, self.pool, 0, enable_caching),)
        self.block_size = block_size
        self.reprefillable_tokens = 0

    def blocks_to_allocate(self, request_id, num_tokens, new_computed, total_computed, local_computed) -> int:
        n = 0
        for i, g in enumerate(self.groups):
            n += g.blocks_to_allocate(request_id, num_tokens, new_computed[i], total_computed, local_computed)
        return n

    def add_hit_blocks(self, request_id, new_computed, local_computed) -> None:
        if any(request_id in g.num_cached_block for g in self.groups):
            assert all(len(b) == 0 for b in new_computed)
            return
        for i, g in enumerate(self.groups):
            g.add_hit_blocks(request_id, new_computed[i], local_computed)

    def allocate_new_blocks(self, request_id, num_tokens) -> tuple:
        return tuple(g.allocate_new_blocks(request_id, num_tokens) for g in self.groups)

    def cache_blocks(self, request, num_tokens) -> None:
        for g in self.groups:
            g.cache_blocks(request, max(0, num_tokens - self.reprefillable_tokens))

    def free(self, request_id) -> None:
        for g in self.groups:
            g.free(request_id)

    def remove_skipped_blocks(self, request_id, processed_tokens) -> None:
        for g in self.groups:
            g.remove_skipped_blocks(request_id, processed_tokens)

    def longest_cache_hit(self, block_hashes, max_length) -> tuple:
        hits, hit_len = self.groups[0].longest_cache_hit(block_hashes, max_length, [0])
        return hits, hit_len

    def new_step_starts(self) -> None:
        for g in self.groups:
            g.new_step_starts()


class BlockGrant:
    """What allocate_slots / get_computed_blocks return: per group, a list
    of blocks (vLLM's KVCacheBlocks)."""
    __slots__ = ("blocks",)

    def __init__(self, blocks: tuple):
        self.blocks = blocks

    def get_block_ids(self, allow_none: bool = False):
        if allow_none and all(len(g) == 0 for g in self.blocks):
            return None
        return tuple([b.block_id for b in g] for g in self.blocks)


class BlockManager:
    def __init__(self, block_size: int, num_blocks: int, max_model_len: int,
                 enable_caching: bool = True, watermark_blocks: int = 0):
        self.enable_caching = enable_caching
        self.max_model_len = max_model_len
        self.coordinator = SingleGroupCoordinator(block_size, num_blocks, max_model_len, enable_caching)
        self.pool = self.coordinator.pool
        self.watermark_blocks = watermark_blocks
        self.empty = BlockGrant(((),))

    def grant(self, blocks: tuple) -> BlockGrant:
        return BlockGrant(blocks) if any(blocks) else self.empty

    def get_computed_blocks(self, request: Request) -> tuple:
        if not self.enable_caching or request.skip_reading_prefix_cache:
            return self.empty, 0
        # Keep at least the last token to compute, for its logits.
        hits, hit_len = self.coordinator.longest_cache_hit(request.block_hashes, request.num_tokens - 1)
        return self.grant(hits), hit_len

    def allocate_slots(self, request: Request, num_new_tokens: int, num_new_computed_tokens: int = 0,
                       new_computed: BlockGrant | None = None, num_lookahead_tokens: int = 0,
                       has_scheduled_reqs: bool = True):
        if num_new_tokens == 0:
            raise ValueError("num_new_tokens must be > 0")
        hit_lists = new_computed.blocks if new_computed is not None else self.empty.blocks
        local_computed = request.num_computed_tokens + num_new_computed_tokens
        total_computed = min(local_computed, self.max_model_len)
        watermark = 0
        if has_scheduled_reqs and request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            watermark = self.watermark_blocks
        main_tokens = total_computed + num_new_tokens
        slot_tokens = min(main_tokens + num_lookahead_tokens, self.max_model_len)
        coord = self.coordinator
        coord.remove_skipped_blocks(request.request_id, max(0, total_computed - request.num_in_flight_tokens))
        need = coord.blocks_to_allocate(request.request_id, slot_tokens, hit_lists, total_computed, local_computed)
        if need + watermark > self.pool.num_free():
            return None
        if hit_lists is not self.empty.blocks:
            coord.add_hit_blocks(request.request_id, hit_lists, local_computed)
        new_blocks = coord.allocate_new_blocks(request.request_id, slot_tokens)
        if not self.enable_caching:
            return self.grant(new_blocks)
        # Only tokens already known (not draft tokens) are cached.
        coord.cache_blocks(request, min(total_computed + num_new_tokens, request.num_tokens))
        return self.grant(new_blocks)

    def free(self, request: Request) -> None:
        self.coordinator.free(request.request_id)

    def new_step_starts(self) -> None:
        self.coordinator.new_step_starts()

    def req_blocks(self, request_id: str) -> list:
        return self.coordinator.groups[0].req_to_blocks.get(request_id, [])


# ---------------------------------------------------------------------------
# The model runner's persistent block table, in pure Python.
# ---------------------------------------------------------------------------

class BlockTableRows:
    """A padded table, max_blocks ids per row (vLLM: an int32 numpy array),
    with the number of ids in each row; rows only grow while a request runs."""

    def __init__(self, max_reqs: int, max_blocks: int):
        self.max_blocks = max_blocks
        self.ids = [0] * (max_reqs * max_blocks)
        self.num_blocks_per_row = [0] * max_reqs

    def append_row(self, block_ids: list, row: int) -> None:
        if not block_ids:
            return
        n = len(block_ids)
        start = self.num_blocks_per_row[row]
        self.num_blocks_per_row[row] = start + n
        base = row * self.max_blocks + start
        self.ids[base:base + n] = block_ids

    def add_row(self, block_ids: list, row: int) -> None:
        self.num_blocks_per_row[row] = 0
        self.append_row(block_ids, row)

    def clear_row(self, row: int) -> None:
        n = self.num_blocks_per_row[row]
        if n > 0:
            base = row * self.max_blocks
            self.ids[base:base + n] = [0] * n
        self.num_blocks_per_row[row] = 0

    def row(self, row: int) -> list:
        base = row * self.max_blocks
        return self.ids[base:base + self.num_blocks_per_row[row]]


# ---------------------------------------------------------------------------
# Workload helpers.
# ---------------------------------------------------------------------------

VOCAB = 32000


def prompt_tokens(seed: int, n: int) -> list:
    """n token ids, distinct per seed (a cheap LCG; no sharing across seeds)."""
    x = (seed * 2654435761 + 12345) & 0xFFFFFFFF
    out = []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append(x % VOCAB)
    return out


def prime_pool(pool: BlockPool) -> None:
    """Give every free block a distinct hash, indexed, as if finished
    requests had left them cached: later allocations then evict."""
    for b in pool.free_queue.blocks_in_order():
        if b.block_hash is None:
            key = with_group(hashlib.sha256(b"primed:%d" % b.block_id).digest(), 0)
            b.set_block_hash(key)
            pool.index.insert(key, b)


class Clock:
    def __init__(self, kind: str):
        self.kind = kind
        self.now = time.perf_counter_ns if kind == "wall" else time.process_time_ns


def timed_region():
    """Collect now, then keep the collector off while the caller times."""
    gc.collect()
    gc.disable()


def end_timed_region():
    gc.enable()


# ---------------------------------------------------------------------------
# The figures.
# ---------------------------------------------------------------------------

def run_decode(cfg, clock: Clock, with_table: bool, check: bool = False) -> float:
    """ns per request-step of `requests` requests decoding `steps` tokens each
    from `context` tokens of prefilled context."""
    bs, n_req, ctx, steps = cfg.block_size, cfg.requests, cfg.context, cfg.steps
    max_len = max(cfg.max_model_len, ctx + steps + 1)
    mgr = BlockManager(bs, cfg.pool_blocks, max_len)
    if not cfg.cold_pool:
        prime_pool(mgr.pool)
    hasher = make_block_hasher(bs, sha256_of)
    max_blocks = cdiv(max_len, bs)
    table = BlockTableRows(n_req, max_blocks)
    running = []
    # Prefill, not timed: admission, the whole prompt computed, the first
    # sampled token appended.
    for r in range(n_req):
        req = Request(f"r{r}", prompt_tokens(r, ctx), hasher)
        hit, hit_len = mgr.get_computed_blocks(req)
        grant = mgr.allocate_slots(req, ctx - hit_len, hit_len, hit if hit_len else None)
        assert grant is not None
        req.status = RequestStatus.RUNNING
        req.num_computed_tokens = ctx
        table.add_row([b.block_id for b in mgr.req_blocks(req.request_id)], r)
        req.append_output_token_ids(prompt_tokens(10_000_000 + r, 1)[0])
        running.append(req)
    toks = [prompt_tokens(20_000_000 + s, n_req) for s in range(steps)]
    new_ids = [None] * n_req
    slots = [0] * n_req
    ids, maxb = table.ids, table.max_blocks
    allocate = mgr.allocate_slots
    rows = range(n_req)

    timed_region()
    t0 = clock.now()
    for s in range(steps):
        mgr.new_step_starts()
        # The scheduler: one token per running request.
        for r in rows:
            req = running[r]
            grant = allocate(req, 1)
            if grant is None:
                raise RuntimeError("pool exhausted; raise --pool-blocks")
            new_ids[r] = grant.get_block_ids(allow_none=True)
            req.num_computed_tokens += 1
        if with_table:
            # The model runner: new block ids into the persistent table,
            # then the slot of the one token each request computes.
            for r in rows:
                got = new_ids[r]
                if got is not None:
                    table.append_row(got[0], r)
                pos = running[r].num_computed_tokens - 1
                slots[r] = ids[r * maxb + pos // bs] * bs + pos % bs
        # The sampled tokens come back: append (and hash a filled block).
        step_toks = toks[s]
        for r in rows:
            running[r].append_output_token_ids(step_toks[r])
    t1 = clock.now()
    end_timed_region()

    if check:
        for r, req in enumerate(running):
            held = [b.block_id for b in mgr.req_blocks(req.request_id)]
            assert req.num_computed_tokens == ctx + steps
            assert len(held) == cdiv(ctx + steps, bs)
            if with_table:
                assert table.row(r) == held, "block table row differs from the manager's blocks"
                pos = ctx + steps - 1
                assert slots[r] == held[pos // bs] * bs + pos % bs
            assert len(req.block_hashes) == req.num_tokens // bs
    return (t1 - t0) / (steps * n_req)


def run_allocate_free(cfg, clock: Clock) -> tuple:
    """ns per block of allocate_slots and of free() for new 2048-token
    requests (hashes computed at request creation, not timed)."""
    bs, n, tokens = cfg.block_size, cfg.alloc_requests, cfg.alloc_tokens
    per_req = cdiv(tokens, bs)
    mgr = BlockManager(bs, n * per_req + 16, max(cfg.max_model_len, tokens))
    if not cfg.cold_pool:
        prime_pool(mgr.pool)
    hasher = make_block_hasher(bs, sha256_of)
    reqs = [Request(f"a{i}", prompt_tokens(1000 + i, tokens), hasher) for i in range(n)]
    allocate, free = mgr.allocate_slots, mgr.free

    timed_region()
    t0 = clock.now()
    for req in reqs:
        if allocate(req, tokens) is None:
            raise RuntimeError("pool exhausted")
    t1 = clock.now()
    for req in reqs:
        free(req)
    t2 = clock.now()
    end_timed_region()

    blocks = n * per_req
    return (t1 - t0) / blocks, (t2 - t1) / blocks


def run_admit(cfg, clock: Clock, check: bool = False) -> float:
    """µs per admission of a 2048-token prompt whose first 1024 tokens a
    finished request left in the prefix cache."""
    bs, n, tokens, shared = cfg.block_size, cfg.admissions, cfg.alloc_tokens, cfg.shared_tokens
    mgr = BlockManager(bs, (n + 2) * cdiv(tokens, bs) + 16, max(cfg.max_model_len, tokens))
    if not cfg.cold_pool:
        prime_pool(mgr.pool)
    hasher = make_block_hasher(bs, sha256_of)
    prefix = prompt_tokens(7, shared)
    # The earlier request: its prompt is the prefix (and one more token, so
    # that every prefix block is full and cached), then it finishes.
    first = Request("first", prefix + [1], hasher)
    assert mgr.allocate_slots(first, first.num_tokens) is not None
    mgr.free(first)
    prompts = [prefix + prompt_tokens(5000 + a, tokens - shared) for a in range(n)]
    admitted = []
    total = 0

    timed_region()
    for a in range(n):
        t0 = clock.now()
        req = Request(f"n{a}", prompts[a], hasher)
        hit, hit_len = mgr.get_computed_blocks(req)
        grant = mgr.allocate_slots(req, req.num_tokens - hit_len, hit_len, hit if hit_len else None)
        if grant is None:
            raise RuntimeError("pool exhausted")
        req.num_computed_tokens = hit_len
        req.status = RequestStatus.RUNNING
        total += clock.now() - t0
        if hit_len != shared:
            raise RuntimeError(f"the cached prefix was missed ({hit_len} of {shared} tokens)")
        admitted.append(req)
    end_timed_region()

    if check:
        shared_blocks = mgr.req_blocks(admitted[0].request_id)[: shared // bs]
        for b in shared_blocks:
            assert b.ref_cnt == n, (b, n)
        for req in admitted:
            assert len(mgr.req_blocks(req.request_id)) == cdiv(tokens, bs)
    return total / n / 1000.0


def run_release(cfg, clock: Clock) -> float:
    """ns per block to release finished 2048-token requests: the manager's
    free(), the scheduler's dict entry, the block-table row cleared."""
    bs, n, tokens = cfg.block_size, cfg.alloc_requests, cfg.alloc_tokens
    per_req = cdiv(tokens, bs)
    mgr = BlockManager(bs, n * per_req + 16, max(cfg.max_model_len, tokens))
    if not cfg.cold_pool:
        prime_pool(mgr.pool)
    hasher = make_block_hasher(bs, sha256_of)
    table = BlockTableRows(n, cdiv(max(cfg.max_model_len, tokens), bs))
    live: dict = {}
    order = []
    for i in range(n):
        req = Request(f"f{i}", prompt_tokens(3000 + i, tokens), hasher)
        assert mgr.allocate_slots(req, tokens) is not None
        req.num_computed_tokens = tokens
        req.status = RequestStatus.FINISHED
        table.add_row([b.block_id for b in mgr.req_blocks(req.request_id)], i)
        live[req.request_id] = req
        order.append((i, req))
    free = mgr.free

    timed_region()
    t0 = clock.now()
    for row, req in order:
        free(req)
        del live[req.request_id]
        table.clear_row(row)
    t1 = clock.now()
    end_timed_region()

    return (t1 - t0) / (n * per_req)


# ---------------------------------------------------------------------------
# Self-check.
# ---------------------------------------------------------------------------

def check_free_list(pool: BlockPool) -> list:
    """The free list is well linked both ways, counts right, and holds no
    block twice; returns it head first."""
    fwd = pool.free_queue.blocks_in_order()
    back = []
    cur = pool.free_queue.tail.prev_free_block
    while cur is not None and cur is not pool.free_queue.head:
        back.append(cur)
        cur = cur.prev_free_block
    assert fwd == back[::-1], "free list links disagree"
    assert len(fwd) == pool.free_queue.num_free_blocks, "free count is off"
    assert len({b.block_id for b in fwd}) == len(fwd), "a block is twice in the free list"
    for b in fwd:
        assert b.ref_cnt == 0 and not b.is_null
    return fwd


def self_check() -> dict:
    bs = 16
    results = {}
    hasher = make_block_hasher(bs, sha256_of)

    # 1. Allocation pops from the head, in queue order; free returns every
    #    block, once, with ref counts back to 0; the tail is freed first.
    mgr = BlockManager(bs, 64, 4096)
    pool = mgr.pool
    head_ids = [b.block_id for b in check_free_list(pool)[:5]]
    a = Request("a", prompt_tokens(1, 70), hasher)  # 4 full blocks + 6 tokens
    assert len(a.block_hashes) == 4
    assert mgr.allocate_slots(a, 70) is not None
    got = [b.block_id for b in mgr.req_blocks("a")]
    assert got == head_ids, (got, head_ids)
    assert all(b.ref_cnt == 1 for b in mgr.req_blocks("a"))
    assert len(pool.index) == 4, "the 4 full blocks are cached"
    assert mgr.req_blocks("a")[4].block_hash is None, "the partial block is not"
    mgr.free(a)
    free = check_free_list(pool)
    assert len(free) == 63 and {b.block_id for b in free} == set(range(1, 64))
    assert all(b.ref_cnt == 0 for b in pool.blocks)
    # The unhashed tail block went to the front; the cached ones to the
    # back, tail first (evicted first).
    assert free[0].block_id == got[4]
    assert [b.block_id for b in free[-4:]] == [got[3], got[2], got[1], got[0]]
    results["allocate_free"] = "ok"

    # 2. A cached prefix is found again, and touch() takes a free hit block
    #    out of the middle of the free list.
    b = Request("b", prompt_tokens(1, 70)[:64] + prompt_tokens(2, 40), hasher)
    hit, hit_len = mgr.get_computed_blocks(b)
    assert hit_len == 64, hit_len
    assert [x.block_id for x in hit.blocks[0]] == got[:4]
    before = pool.num_free()
    assert mgr.allocate_slots(b, b.num_tokens - hit_len, hit_len, hit) is not None
    assert pool.num_free() == before - 4 - (cdiv(104, bs) - 4)
    assert all(x.ref_cnt == 1 and x.prev_free_block is None for x in hit.blocks[0])
    check_free_list(pool)
    # A second sharer: ref counts 2, no free-list change for the shared part.
    c = Request("c", prompt_tokens(1, 70)[:64] + prompt_tokens(3, 20), hasher)
    hit_c, hit_len_c = mgr.get_computed_blocks(c)
    assert hit_len_c == 64
    assert mgr.allocate_slots(c, c.num_tokens - hit_len_c, hit_len_c, hit_c) is not None
    assert all(x.ref_cnt == 2 for x in hit.blocks[0])
    # A prompt that is exactly the prefix: the last token is recomputed, so
    # at most num_tokens - 1 tokens hit (3 blocks of 4).
    d = Request("d", prompt_tokens(1, 70)[:64], hasher)
    _, hit_len_d = mgr.get_computed_blocks(d)
    assert hit_len_d == 48, hit_len_d
    mgr.free(b)
    mgr.free(c)
    assert all(x.ref_cnt == 0 for x in pool.blocks)
    free = check_free_list(pool)
    assert len(free) == 63
    results["prefix_hit"] = "ok"

    # 3. Eviction pops from the head: with every block cached, allocation
    #    takes the head blocks and drops their hashes from the index.
    mgr2 = BlockManager(bs, 17, 4096)  # 16 usable blocks
    pool2 = mgr2.pool
    e = Request("e", prompt_tokens(4, 256), hasher)  # 16 full blocks
    assert mgr2.allocate_slots(e, 256) is not None
    assert pool2.num_free() == 0 and len(pool2.index) == 16
    mgr2.free(e)
    order = [x.block_id for x in check_free_list(pool2)]
    f = Request("f", prompt_tokens(5, 40), hasher)  # needs 3 blocks
    assert mgr2.allocate_slots(f, 40) is not None
    taken = [x.block_id for x in mgr2.req_blocks("f")]
    assert taken == order[:3], (taken, order[:3])
    assert len(pool2.index) == 16 - 3 + 2, "3 evicted, f's 2 full blocks cached"
    # e's first blocks are still cached (its tail went first): a hit.
    g = Request("g", prompt_tokens(4, 256)[:100], hasher)
    _, hit_len_g = mgr2.get_computed_blocks(g)
    assert hit_len_g == 6 * bs, hit_len_g
    # But its evicted tail is gone.
    h = Request("h", prompt_tokens(4, 256) + [1], hasher)
    _, hit_len_h = mgr2.get_computed_blocks(h)
    assert hit_len_h == 13 * bs, hit_len_h
    mgr2.free(f)
    assert all(x.ref_cnt == 0 for x in pool2.blocks)
    assert len(check_free_list(pool2)) == 16
    results["eviction_from_head"] = "ok"

    # 4. Decode: a new block every block_size steps, the table rows equal
    #    the manager's blocks, the slot mapping is right, and after freeing
    #    everything the free list holds every block exactly once.
    class Small:
        block_size, requests, context, steps = 16, 8, 1000, 40
        max_model_len, pool_blocks, cold_pool = 4096, 8 * 2048 // 16 * 2, False
    run_decode(Small, Clock("wall"), with_table=True, check=True)
    mgr3 = BlockManager(bs, 300, 4096)
    pool3 = mgr3.pool
    reqs = [Request(f"d{i}", prompt_tokens(40 + i, 100), hasher) for i in range(4)]
    for r in reqs:
        assert mgr3.allocate_slots(r, 100) is not None
        r.num_computed_tokens = 100
        r.append_output_token_ids(1)
    held0 = [len(mgr3.req_blocks(r.request_id)) for r in reqs]
    grown_at = []
    for step in range(40):
        for r in reqs:
            grant = mgr3.allocate_slots(r, 1)
            ids = grant.get_block_ids(allow_none=True)
            if ids is not None:
                grown_at.append((step, r.request_id, len(ids[0])))
            r.num_computed_tokens += 1
            r.append_output_token_ids(2 + step)
    # Context 100 -> slots 101..140: new blocks at 113 and 129 (steps 12, 28).
    assert sorted({s for s, _, _ in grown_at}) == [12, 28], grown_at
    assert all(n == 1 for _, _, n in grown_at)
    for r, h0 in zip(reqs, held0):
        assert len(mgr3.req_blocks(r.request_id)) == h0 + 2
        # The full blocks (decoded ones too) are cached.
        assert mgr3.coordinator.groups[0].num_cached_block[r.request_id] == 140 // bs
    for r in reqs:
        mgr3.free(r)
    free = check_free_list(pool3)
    assert {x.block_id for x in free} == set(range(1, 300))
    assert all(x.ref_cnt == 0 for x in pool3.blocks)
    results["decode_and_release"] = "ok"

    # 5. The benchmark's own figures run (tiny) and their invariants hold.
    class Tiny:
        block_size, requests, context, steps = 16, 4, 100, 20
        max_model_len, pool_blocks, cold_pool = 4096, 200, False
        alloc_requests, alloc_tokens, admissions, shared_tokens = 4, 2048, 4, 1024
    run_allocate_free(Tiny, Clock("wall"))
    run_admit(Tiny, Clock("wall"), check=True)
    run_release(Tiny, Clock("wall"))
    results["figures_smoke"] = "ok"
    return results


# ---------------------------------------------------------------------------
# Harness.
# ---------------------------------------------------------------------------

def summarize(runs: list) -> dict:
    return {"median": round(statistics.median(runs), 3),
            "min": round(min(runs), 3), "max": round(max(runs), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 5; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="few steps and reps: < 5 s, for tests")
    p.add_argument("--self-check", action="store_true", help="run the correctness asserts and exit")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--requests", type=int, default=256, help="running requests in the decode figure")
    p.add_argument("--context", type=int, default=1000, help="prefilled tokens per decoding request")
    p.add_argument("--steps", type=int, default=None, help="decode steps (default 64; 32 with --quick)")
    p.add_argument("--pool-blocks", type=int, default=None,
                   help="pool size for the decode figure (default requests * 2048 / block_size * 2)")
    p.add_argument("--alloc-requests", type=int, default=None,
                   help="2048-token requests allocated/freed/released (default 64; 16 with --quick)")
    p.add_argument("--admissions", type=int, default=None, help="admissions timed (default 64; 16 with --quick)")
    p.add_argument("--cold-pool", action="store_true",
                   help="do not prime the pool's blocks with hashes (no evictions on allocation)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: time.perf_counter_ns (default, as the C++ side); cpu: time.process_time_ns")
    args = p.parse_args(argv)

    if args.self_check:
        t0 = time.perf_counter()
        res = self_check()
        print(json.dumps({"peer": "vllm_v1_blocks", "self_check": res,
                          "seconds": round(time.perf_counter() - t0, 3)}, indent=2))
        return 0

    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    if reps < 1:
        p.error("--reps must be >= 1")

    class Cfg:
        pass
    cfg = Cfg()
    cfg.block_size = args.block_size
    cfg.requests = args.requests
    cfg.context = args.context
    cfg.steps = args.steps if args.steps is not None else (32 if args.quick else 64)
    cfg.max_model_len = 4096
    cfg.pool_blocks = args.pool_blocks if args.pool_blocks is not None else \
        max(cfg.requests * 2048 // cfg.block_size * 2,
            cfg.requests * (cdiv(cfg.context + cfg.steps + 1, cfg.block_size) + 1) + 1)
    cfg.alloc_requests = args.alloc_requests if args.alloc_requests is not None else (16 if args.quick else 64)
    cfg.alloc_tokens = 2048
    cfg.shared_tokens = 1024
    cfg.admissions = args.admissions if args.admissions is not None else (16 if args.quick else 64)
    cfg.cold_pool = args.cold_pool
    clock = Clock(args.clock)

    names = ["request_step_ns", "request_step_manager_only_ns", "allocate_ns_per_block",
             "free_ns_per_block", "admit_2k_with_1k_cached_us", "release_ns_per_block"]
    runs = {n: [] for n in names}
    t_start = time.perf_counter()
    for _ in range(reps):
        runs["request_step_ns"].append(run_decode(cfg, clock, with_table=True))
        runs["request_step_manager_only_ns"].append(run_decode(cfg, clock, with_table=False))
        alloc, free = run_allocate_free(cfg, clock)
        runs["allocate_ns_per_block"].append(alloc)
        runs["free_ns_per_block"].append(free)
        runs["admit_2k_with_1k_cached_us"].append(run_admit(cfg, clock))
        runs["release_ns_per_block"].append(run_release(cfg, clock))

    out = {"peer": "vllm_v1_blocks", "block_size": cfg.block_size}
    for n in names:
        out[n] = summarize(runs[n])
    out["config"] = {
        "reps": reps, "clock": args.clock, "requests": cfg.requests, "context": cfg.context,
        "steps": cfg.steps, "pool_blocks": cfg.pool_blocks, "alloc_requests": cfg.alloc_requests,
        "admissions": cfg.admissions, "primed_pool": not cfg.cold_pool, "hash": "sha256(pickle)",
        "gc_disabled_while_timing": True, "python": platform.python_version(),
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
