// One decode step's update (1 token, 8 kv-heads of 128, f32 into an f16
// cache) through the crate: the loop of bench/update_overhead.cc. Prints
// "rust <ns per update>" per round (tools/bindings_bench.sh).
use kvpage::{Cache, Config, DType};
use std::time::Instant;

const HEADS: usize = 8;
const DIM: usize = 128;
const WINDOW: usize = 1024;
const UPDATES: usize = 200_000;

fn main() -> Result<(), kvpage::Error> {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let token = vec![0.25f32; HEADS * DIM];
    for _ in 0..rounds {
        let mut cache = Cache::new(&Config {
            num_layers: 1, num_kv_heads: HEADS, head_dim: DIM, dtype: DType::F16,
            block_tokens: 16, num_blocks: WINDOW / 16 + 2, max_seq_len: WINDOW,
            ..Config::default()
        })?;
        let seq = cache.add_sequence()?;
        let t0 = Instant::now();
        for i in 0..UPDATES {
            let len = i % WINDOW + 1;
            cache.update(seq, 0, &token, &token, len)?;
            if len == WINDOW {
                cache.truncate(seq, 0)?;
            }
        }
        println!("rust {:.1}", t0.elapsed().as_secs_f64() * 1e9 / UPDATES as f64);
    }
    Ok(())
}
