use kvpage::{Cache, Config, DType};

fn main() -> Result<(), kvpage::Error> {
    let mut cache = Cache::new(&Config {
        num_layers: 1, num_kv_heads: 2, head_dim: 4, dtype: DType::F32,
        num_blocks: 16, max_seq_len: 64, ..Config::default()
    })?;
    let seq = cache.add_sequence()?;
    let k = vec![0.5f32; 3 * 2 * 4]; // [tokens][kv_heads][head_dim]
    cache.update(seq, 0, &k, &k, 3)?;
    let view = cache.view(seq, 0)?; // borrows the cache: no update while it lives
    for block in view.blocks() {
        let (keys, _values, _stride) = block.f32_slices().expect("a hot f32 block");
        assert_eq!(keys[0], 0.5);
    }
    println!("{} tokens, {} bytes", view.tokens(), cache.stats().memory_usage_bytes);
    Ok(())
}
