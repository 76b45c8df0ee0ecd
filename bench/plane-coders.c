/*
 * The coder for the byte planes that pay (issue: "zstd, or a pure Huffman/FSE stage from the same
 * library where that is faster at the same ratio - measure"): one plane of a checkpoint file, in
 * 1 MiB blocks (the exponent plane of a 4 MiB fp32 chunk), coded three ways, best of 5 runs:
 *   - what src/transform/planes.ts does: zstd level 1, minMatch 7, hashLog 6;
 *   - raw Huffman (HUF_compress4X over 128 KiB blocks): not a zstd frame, a format change;
 *   - a zstd frame of literals only (ZSTD_compressSequences with no matches): the same format.
 * Build and run (zstd's sources come with zstd-napi):
 *   Z=node_modules/zstd-napi/deps/zstd/lib
 *   gcc -O3 -march=native -DZSTD_MULTITHREAD=0 -DZSTD_DISABLE_ASM -I$Z -I$Z/common bench/plane-coders.c \
 *       $Z/common/*.c $Z/compress/*.c $Z/decompress/*.c -o /tmp/plane-coders -lpthread
 *   /tmp/plane-coders FILE ELEMENT_SIZE PLANE      # e.g. full/model.pt 4 3, export/*.safetensors 2 1
 * Results: bench/README.md ("Plane coders").
 */
#define ZSTD_STATIC_LINKING_ONLY
#define HUF_STATIC_LINKING_ONLY
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "zstd.h"
#include "common/huf.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "rb"); fseek(f, 0, SEEK_END); long size = ftell(f); fseek(f, 0, SEEK_SET);
  unsigned char *raw = malloc(size); fread(raw, 1, size, f); fclose(f);
  int es = atoi(argv[2]); int plane = atoi(argv[3]);
  size_t n = size / es; unsigned char *p = malloc(n);
  for (size_t i = 0; i < n; i++) p[i] = raw[i * es + plane];
  const size_t chunk = 1 << 20; /* the plane of a 4 MiB fp32 chunk */
  size_t cap = ZSTD_compressBound(chunk) + 1024; unsigned char *out = malloc(cap);
  void *wksp = malloc(HUF_WORKSPACE_SIZE); HUF_CElt *table = malloc(sizeof(HUF_CElt) * 257);
  ZSTD_CCtx *cc = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 1);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_minMatch, 7);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_hashLog, 6);
  ZSTD_CCtx *cs = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cs, ZSTD_c_compressionLevel, 1);
  ZSTD_CCtx_setParameter(cs, ZSTD_c_blockDelimiters, ZSTD_sf_explicitBlockDelimiters);
  ZSTD_DCtx *dc = ZSTD_createDCtx(); unsigned char *back = malloc(chunk);
  ZSTD_Sequence seqs[16];
  for (int variant = 0; variant < 3; variant++) {
    double best = 1e9; size_t total = 0, in = 0;
    for (int rep = 0; rep < 5; rep++) {
      total = 0; in = 0; double t = now();
      for (size_t at = 0; at + chunk <= n; at += chunk) {
        size_t r;
        if (variant == 0) r = ZSTD_compress2(cc, out, cap, p + at, chunk);
        else if (variant == 1) {
          r = 0;
          for (size_t b = 0; b < chunk; b += 128 * 1024) {
            HUF_repeat rep0 = HUF_repeat_none; size_t c = HUF_compress4X_repeat(out, cap, p + at + b, 128 * 1024, 255, 11, wksp, HUF_WORKSPACE_SIZE, table, &rep0, 0);
            r += (c == 0 ? 128 * 1024 : c);
          }
        } else {
          int nb = chunk / (128 * 1024);
          for (int b = 0; b < nb; b++) { memset(&seqs[b], 0, sizeof seqs[b]); seqs[b].litLength = 128 * 1024; }
          r = ZSTD_compressSequences(cs, out, cap, seqs, nb, p + at, chunk);
          if (ZSTD_isError(r)) { fprintf(stderr, "%s\n", ZSTD_getErrorName(r)); return 1; }
          if (rep == 0 && at == 0) { size_t d = ZSTD_decompressDCtx(dc, back, chunk, out, r); if (d != chunk || memcmp(back, p + at, chunk)) { fprintf(stderr, "roundtrip failed\n"); return 1; } }
        }
        total += r; in += chunk;
      }
      double dt = now() - t; if (dt < best) best = dt;
    }
    const char *names[] = {"zstd level1 minMatch7 hashLog6 (today)", "HUF_compress4X 128K blocks (raw huffman)", "zstd frame, literals only (compressSequences)"};
    printf("%-48s ratio %.3f  %.0f MB/s\n", names[variant], (double)total / in, in / best / 1e6);
  }
  return 0;
}
