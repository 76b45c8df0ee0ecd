// Core hot loops of tender's native addon, kept free of Node-API so they can be unit-tested and
// benchmarked on their own. The semantics are defined by src/backup/chunk/fastcdc.ts
// (GearChunker.cut); every variant here must return exactly the same cut positions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tender {

struct GearParams {
  uint32_t gear[256];
  uint32_t gearLs[256];  // gear[b] << 1 (mod 2^32), for the two-bytes-per-step loop
  size_t minSize;
  size_t avgSize;
  size_t maxSize;
  uint32_t maskHard;
  uint32_t maskEasy;
};

enum class CutVariant : int { Bytewise = 1, Rolling2 = 2 };

// Scan data[i, stop) continuing from hash *h: returns the index of the first byte after whose
// hash update (h & mask) == 0 (setting *found), or `stop` with *h updated and *found cleared.
// They are out-of-line (in gear.cc) so that cut and cutAll share one copy of each hot loop.
//
// Bytewise: one byte at a time, h = (h << 1) + gear[b]; a literal transcription of the TS
// reference.
size_t scanBytewise(const uint8_t* data, size_t i, size_t stop, uint32_t mask, const uint32_t* gear,
                    uint32_t* hp, bool* found);

// Rolling2: FastCDC's "rolling two bytes": per step, h2 = (h << 2) + (gearLs[b0] + gear[b1])
// keeps the loop-carried dependency at one shift-add per two bytes; the intermediate hash
// h1 = (h << 1) + gear[b0] is computed off the critical path so that the mask is still tested
// after every single byte, exactly like the reference (so odd cut positions are found too).
size_t scanRolling2(const uint8_t* data, size_t i, size_t stop, uint32_t mask, const uint32_t* gear,
                    const uint32_t* gearLs, uint32_t* hp, bool* found);

// Length of the chunk starting at `start` in data[start, end) (see fastcdc.ts for the contract).
template <CutVariant V>
static inline size_t cutImpl(const GearParams& p, const uint8_t* data, size_t start, size_t end) {
  const size_t available = end - start;
  if (available <= p.minSize) return available;
  const size_t limit = start + (available < p.maxSize ? available : p.maxSize);
  const size_t normal = start + (available < p.avgSize ? available : p.avgSize);
  uint32_t h = 0;
  bool found = false;
  size_t i;
  if (V == CutVariant::Rolling2) {
    i = scanRolling2(data, start + p.minSize, normal, p.maskHard, p.gear, p.gearLs, &h, &found);
    if (found) return i + 1 - start;
    i = scanRolling2(data, i, limit, p.maskEasy, p.gear, p.gearLs, &h, &found);
  } else {
    i = scanBytewise(data, start + p.minSize, normal, p.maskHard, p.gear, &h, &found);
    if (found) return i + 1 - start;
    i = scanBytewise(data, i, limit, p.maskEasy, p.gear, &h, &found);
  }
  if (found) return i + 1 - start;
  return limit - start;
}

size_t cut(const GearParams& p, CutVariant v, const uint8_t* data, size_t start, size_t end);

// Successive chunk lengths from `start`: continues while end - pos ≥ maxSize, or, when `eof`,
// until the end of the data; stops early when `out` is full. Returns the number written.
size_t cutAll(const GearParams& p, CutVariant v, const uint8_t* data, size_t start, size_t end,
              bool eof, uint32_t* out, size_t outLen);

void shuffle(const uint8_t* src, uint8_t* dst, size_t len, size_t elementSize);
// shuffle of (src XOR base), base of len bytes.
void shuffleXor(const uint8_t* src, const uint8_t* base, uint8_t* dst, size_t len, size_t elementSize);
// dst = unshuffle(planes[0..elementSize) of n bytes each, then tail) XOR base (when not null; base
// may be dst itself).
void unshufflePlanes(const uint8_t* const* planes, const uint8_t* tail, size_t tailLength, uint8_t* dst, const uint8_t* base, size_t n,
                     size_t elementSize);

}  // namespace tender
