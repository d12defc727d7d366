// Decodes a few hundred tokens through kvpage the way the report's engine
// did — a prompt, then one token per step on every layer — and prints the
// statistics. `cargo run --offline --example decode`.
use kvpage::compat::{CacheStrategy, KVCache};

fn main() -> Result<(), kvpage::Error> {
    let (layers, heads, dim) = (4, 8, 64);
    let mut cache = KVCache::new(layers, heads, dim, 256, CacheStrategy::SlidingWindow)?;
    let token = |t: usize| -> Vec<f32> { (0..heads * dim).map(|e| ((t * 31 + e) % 97) as f32 / 97.0).collect() };
    let prompt: Vec<f32> = (0..32).flat_map(token).collect();
    for layer in 0..layers {
        cache.update(layer, &prompt, &prompt, 32)?;
    }
    for step in 32..400 {
        let kv = token(step);
        for layer in 0..layers {
            cache.update(layer, &kv, &kv, step + 1)?;
        }
        if step % 100 == 0 {
            cache.compress_old_entries(0, 0.5)?;
        }
    }
    let stats = cache.get_cache_stats();
    println!(
        "{} tokens decoded; layer 0 attends over {}; {:.2} MiB held; {} evicted; {} blocks compressed",
        stats.current_length,
        cache.cached_tokens(0)?,
        stats.memory_usage_mb,
        stats.evictions,
        stats.compressions_applied
    );
    Ok(())
}
