#include <kvpage/kvpage_c.h>
#include <stdio.h>

int main(void) {
  kvpage_config config;
  kvpage_config_init(&config); /* kvpage's defaults; sets struct_size */
  config.num_layers = 1, config.num_kv_heads = 2, config.head_dim = 4;
  config.num_blocks = 16, config.max_seq_len = 64;
  kvpage_cache* cache = NULL;
  kvpage_seq_id seq;
  float k[3 * 2 * 4] = {0}, v[3 * 2 * 4] = {0}; /* [tokens][kv_heads][head_dim] */
  kvpage_token_span ks = {k, KVPAGE_F32, 3}, vs = {v, KVPAGE_F32, 3};
  int failed = kvpage_cache_create(&config, &cache) != KVPAGE_OK ||
               kvpage_add_sequence(cache, /*salt=*/0, &seq) != KVPAGE_OK ||
               kvpage_update(cache, seq, /*layer=*/0, &ks, &vs, /*seq_len=*/3) != KVPAGE_OK;
  if (failed) fprintf(stderr, "kvpage: %s\n", kvpage_last_error());
  kvpage_cache_destroy(cache); /* NULL is fine */
  return failed;
}
