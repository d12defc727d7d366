"""One decode step's update (1 token, 8 kv-heads of 128, f32 into an f16
cache) through the Python module: the loop of bench/update_overhead.cc.
Prints "python <ns>" (an array update() reads in place) and "python_copy
<ns>" (a float64 array, converted to a new float32 array for every call, as
an engine holding other dtypes would) per round (tools/bindings_bench.sh)."""
import sys
import time

import numpy as np

import kvpage

HEADS, DIM, WINDOW, UPDATES = 8, 128, 1024, 200_000


def run(make_input):
    cache = kvpage.Cache(num_layers=1, num_kv_heads=HEADS, head_dim=DIM,
                         dtype="f16", block_tokens=16,
                         num_blocks=WINDOW // 16 + 2, max_seq_len=WINDOW)
    seq = cache.add_sequence()
    update, truncate = cache.update, cache.truncate
    t0 = time.perf_counter()
    for i in range(UPDATES):
        length = i % WINDOW + 1
        token = make_input()
        update(seq, 0, token, token, length)
        if length == WINDOW:
            truncate(seq, 0)
    return (time.perf_counter() - t0) * 1e9 / UPDATES


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ready = np.full((1, HEADS, DIM), 0.25, np.float32)
    wide = np.full((1, HEADS, DIM), 0.25, np.float64)
    for _ in range(rounds):
        print(f"python {run(lambda: ready):.1f}")
        print(f"python_copy {run(lambda: wide.astype(np.float32)):.1f}")


if __name__ == "__main__":
    main()
