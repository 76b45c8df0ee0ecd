// Byte-plane transposition ("shuffle") for float tensors: with n = len / elementSize elements,
// plane k (k < elementSize) is dst[k*n, (k+1)*n) and holds byte k of every element; the
// len % elementSize trailing bytes are copied through unchanged after the planes.
// The loops are written so that GCC/Clang auto-vectorize the fixed-size cases.
#include <cstring>

#include "gear.h"

namespace tender {

template <size_t E>
static void shuffleFixed(const uint8_t* __restrict src, uint8_t* __restrict dst, size_t n) {
  for (size_t j = 0; j < n; j++) {
    for (size_t k = 0; k < E; k++) dst[k * n + j] = src[j * E + k];
  }
}

template <size_t E>
static void unshuffleFixed(const uint8_t* __restrict src, uint8_t* __restrict dst, size_t n) {
  for (size_t j = 0; j < n; j++) {
    for (size_t k = 0; k < E; k++) dst[j * E + k] = src[k * n + j];
  }
}

void shuffle(const uint8_t* src, uint8_t* dst, size_t len, size_t elementSize) {
  const size_t n = len / elementSize;
  switch (elementSize) {
    case 1: std::memcpy(dst, src, len); return;
    case 2: shuffleFixed<2>(src, dst, n); break;
    case 4: shuffleFixed<4>(src, dst, n); break;
    case 8: shuffleFixed<8>(src, dst, n); break;
    default:
      for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < elementSize; k++) dst[k * n + j] = src[j * elementSize + k];
  }
  const size_t body = n * elementSize;
  if (len > body) std::memcpy(dst + body, src + body, len - body);
}

void unshuffle(const uint8_t* src, uint8_t* dst, size_t len, size_t elementSize) {
  const size_t n = len / elementSize;
  switch (elementSize) {
    case 1: std::memcpy(dst, src, len); return;
    case 2: unshuffleFixed<2>(src, dst, n); break;
    case 4: unshuffleFixed<4>(src, dst, n); break;
    case 8: unshuffleFixed<8>(src, dst, n); break;
    default:
      for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < elementSize; k++) dst[j * elementSize + k] = src[k * n + j];
  }
  const size_t body = n * elementSize;
  if (len > body) std::memcpy(dst + body, src + body, len - body);
}

}  // namespace tender
