import numpy as np
import kvpage

cache = kvpage.Cache(num_layers=1, num_kv_heads=2, head_dim=4, dtype="f16",
                     num_blocks=16, max_seq_len=64)
seq = cache.add_sequence()
k = np.full((3, 2, 4), 0.5, np.float32)  # [tokens, kv_heads, head_dim]
cache.update(seq, 0, k, k, seq_len=3)
for block in cache.view(seq, 0).blocks:  # read-only arrays over the pool
    assert block.k.dtype == np.float16 and block.k[0, 0, 0] == 0.5
try:
    cache.update(seq, 0, k, k, seq_len=9)  # a gap
except ValueError as e:  # kvpage.InvalidArgumentError
    print("refused:", e)
print(cache.stats()["tokens_stored"], "tokens stored")
