// Byte-plane transposition ("shuffle") for float tensors: with n = len / elementSize elements,
// plane k (k < elementSize) is dst[k*n, (k+1)*n) and holds byte k of every element; the
// len % elementSize trailing bytes are copied through unchanged after the planes. shuffleXor
// shuffles src XOR base in the same pass; unshufflePlanes is the inverse from planes anywhere,
// XORing a base back in (src/transform/shuffle.ts).
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
static void shuffleXorFixed(const uint8_t* __restrict src, const uint8_t* __restrict base, uint8_t* __restrict dst, size_t n) {
  for (size_t j = 0; j < n; j++) {
    for (size_t k = 0; k < E; k++) dst[k * n + j] = src[j * E + k] ^ base[j * E + k];
  }
}

// Gathers plane k from planes[k]; XORs base when given. base may be dst itself, so the in-place
// case is a loop of its own (dst ^= plane) and the others may assume no aliasing.
template <size_t E>
static void unshufflePlanesFixed(const uint8_t* const* planes, uint8_t* dst, const uint8_t* base, size_t n) {
  const uint8_t* p[E];
  for (size_t k = 0; k < E; k++) p[k] = planes[k];
  if (base == dst) {
    for (size_t j = 0; j < n; j++)
      for (size_t k = 0; k < E; k++) dst[j * E + k] ^= p[k][j];
  } else if (base == nullptr) {
    uint8_t* __restrict out = dst;
    for (size_t j = 0; j < n; j++)
      for (size_t k = 0; k < E; k++) out[j * E + k] = p[k][j];
  } else {
    uint8_t* __restrict out = dst;
    const uint8_t* __restrict b = base;
    for (size_t j = 0; j < n; j++)
      for (size_t k = 0; k < E; k++) out[j * E + k] = p[k][j] ^ b[j * E + k];
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

void shuffleXor(const uint8_t* src, const uint8_t* base, uint8_t* dst, size_t len, size_t elementSize) {
  const size_t n = len / elementSize;
  switch (elementSize) {
    case 2: shuffleXorFixed<2>(src, base, dst, n); break;
    case 4: shuffleXorFixed<4>(src, base, dst, n); break;
    case 8: shuffleXorFixed<8>(src, base, dst, n); break;
    default:
      for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < elementSize; k++) dst[k * n + j] = src[j * elementSize + k] ^ base[j * elementSize + k];
  }
  for (size_t i = n * elementSize; i < len; i++) dst[i] = src[i] ^ base[i];
}

void unshufflePlanes(const uint8_t* const* planes, const uint8_t* tail, size_t tailLength, uint8_t* dst, const uint8_t* base, size_t n,
                     size_t elementSize) {
  switch (elementSize) {
    case 2: unshufflePlanesFixed<2>(planes, dst, base, n); break;
    case 4: unshufflePlanesFixed<4>(planes, dst, base, n); break;
    case 8: unshufflePlanesFixed<8>(planes, dst, base, n); break;
    default:
      for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < elementSize; k++) dst[j * elementSize + k] = planes[k][j] ^ (base ? base[j * elementSize + k] : 0);
  }
  const size_t body = n * elementSize;
  for (size_t i = 0; i < tailLength; i++) dst[body + i] = tail[i] ^ (base ? base[body + i] : 0);
}

}  // namespace tender
