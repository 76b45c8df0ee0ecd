#include "gear.h"

namespace tender {

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
