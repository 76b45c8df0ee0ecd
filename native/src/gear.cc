#include "gear.h"

namespace tender {

// The hot loops are out of line and cache-line aligned so that their speed does not depend on
// where the compiler happens to place them inside cut/cutAll (loop alignment alone moved the
// byte-at-a-time loop between 3.0 and 4.7 GB/s on AMD Zen 3).
#if defined(__GNUC__)
#define TENDER_HOT __attribute__((noinline, aligned(64)))
#else
#define TENDER_HOT
#endif

TENDER_HOT size_t scanBytewise(const uint8_t* data, size_t i, size_t stop, uint32_t mask,
                               const uint32_t* gear, uint32_t* hp, bool* found) {
  uint32_t h = *hp;
  for (; i < stop; i++) {
    h = (h << 1) + gear[data[i]];
    if ((h & mask) == 0) {
      *found = true;
      return i;
    }
  }
  *hp = h;
  *found = false;
  return stop;
}

TENDER_HOT size_t scanRolling2(const uint8_t* data, size_t i, size_t stop, uint32_t mask,
                               const uint32_t* gear, const uint32_t* gearLs, uint32_t* hp,
                               bool* found) {
  uint32_t h = *hp;
  while (i + 2 <= stop) {
    const uint32_t g0 = gear[data[i]];
    const uint32_t pair = gearLs[data[i]] + gear[data[i + 1]];
    const uint32_t h1 = (h << 1) + g0;  // hash after byte i
    const uint32_t h2 = (h << 2) + pair;  // hash after byte i + 1, not via h1
    if (__builtin_expect((((h1 & mask) == 0) | ((h2 & mask) == 0)) != 0, 0)) {
      *found = true;
      return (h1 & mask) == 0 ? i : i + 1;
    }
    h = h2;
    i += 2;
  }
  if (i < stop) {  // odd number of bytes in the range
    h = (h << 1) + gear[data[i]];
    if ((h & mask) == 0) {
      *found = true;
      return i;
    }
    i++;
  }
  *hp = h;
  *found = false;
  return stop;
}

size_t cut(const GearParams& p, CutVariant v, const uint8_t* data, size_t start, size_t end) {
  return v == CutVariant::Bytewise ? cutImpl<CutVariant::Bytewise>(p, data, start, end)
                                   : cutImpl<CutVariant::Rolling2>(p, data, start, end);
}

template <CutVariant V>
static size_t cutAllImpl(const GearParams& p, const uint8_t* data, size_t start, size_t end,
                         bool eof, uint32_t* out, size_t outLen) {
  size_t n = 0;
  size_t pos = start;
  while (n < outLen) {
    const size_t remaining = end - pos;
    if (remaining == 0 || (!eof && remaining < p.maxSize)) break;
    const size_t len = cutImpl<V>(p, data, pos, end);
    out[n++] = static_cast<uint32_t>(len);
    pos += len;
  }
  return n;
}

size_t cutAll(const GearParams& p, CutVariant v, const uint8_t* data, size_t start, size_t end,
              bool eof, uint32_t* out, size_t outLen) {
  return v == CutVariant::Bytewise
             ? cutAllImpl<CutVariant::Bytewise>(p, data, start, end, eof, out, outLen)
             : cutAllImpl<CutVariant::Rolling2>(p, data, start, end, eof, out, outLen);
}

}  // namespace tender
