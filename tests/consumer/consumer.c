/* An engine in C, built against an installed kvpage through pkg-config
 * alone: cc consumer.c $(pkg-config --cflags --libs kvpage). */
#include <kvpage/kvpage_c.h>
#include <stdio.h>

int main(void) {
  kvpage_config config;
  kvpage_cache* cache = NULL;
  kvpage_seq_id seq;
  float k[2 * 4 * 8] = {0}, v[2 * 4 * 8] = {0};
  kvpage_token_span ks = {k, KVPAGE_F32, 2}, vs = {v, KVPAGE_F32, 2};
  int64_t length = 0;
  kvpage_config_init(&config);
  config.num_layers = 1;
  config.num_kv_heads = 4;
  config.head_dim = 8;
  config.num_blocks = 8;
  config.max_seq_len = 64;
  if (kvpage_cache_create(&config, &cache) != KVPAGE_OK ||
      kvpage_add_sequence(cache, 0, &seq) != KVPAGE_OK ||
      kvpage_update(cache, seq, 0, &ks, &vs, 2) != KVPAGE_OK ||
      kvpage_length(cache, seq, 0, &length) != KVPAGE_OK || length != 2) {
    fprintf(stderr, "consumer.c: %s\n", kvpage_last_error());
    return 1;
  }
  kvpage_cache_destroy(cache);
  printf("kvpage %s from C: ok\n", kvpage_version_string());
  return 0;
}
