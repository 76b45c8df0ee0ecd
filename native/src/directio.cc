// O_DIRECT writes of whole files through an aligned bounce buffer.
//
// Why: a backup streams gigabytes into a repository on a local disk. Buffered writes copy every
// byte into page-cache pages that must first be allocated (and, in a VM that returns freed memory
// to its host, first touched: ~150-300 MB/s measured on the development VMs, against ~0.9 GB/s
// for the disk itself), and they fill a training node's page cache with pack data nobody reads
// again, evicting the trainer's. Direct I/O reads from memory tender already owns.
//
// O_DIRECT wants the buffer address, the file offset and the length aligned to the device's
// logical block size. Pack buffers come from JS (no alignment control), so the bytes are copied
// into a 4096-aligned bounce buffer (one per libuv thread, allocated once: warm memory) and
// written in pieces of kBounceBytes; the last piece is padded with zeros to a whole block and the
// file is then cut back to its exact length with ftruncate.
#include "directio.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <unistd.h>

namespace tender {
namespace {

constexpr size_t kAlign = 4096;
constexpr size_t kBounceBytes = 1u << 20;

uint8_t* bounceBuffer() {
  thread_local uint8_t* buffer = nullptr;
  if (buffer == nullptr) {
    void* p = nullptr;
    if (posix_memalign(&p, kAlign, kBounceBytes) != 0) return nullptr;
    buffer = static_cast<uint8_t*>(p);
  }
  return buffer;
}

int writeAll(int fd, const uint8_t* data, size_t length, uint64_t offset) {
  while (length > 0) {
    const ssize_t n = pwrite(fd, data, length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    // A short direct write ends on a block boundary only by chance: treat it as refused.
    if (n == 0 || static_cast<size_t>(n) % kAlign != 0) return n == 0 ? EIO : EINVAL;
    data += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return 0;
}

}  // namespace

int writeDirect(int fd, const ConstBytes* parts, size_t count, uint64_t* written) {
  uint8_t* bounce = bounceBuffer();
  if (bounce == nullptr) return ENOMEM;
  uint64_t offset = 0;
  size_t filled = 0;
  for (size_t i = 0; i < count; i++) {
    const uint8_t* src = parts[i].data;
    size_t left = parts[i].length;
    while (left > 0) {
      const size_t take = left < kBounceBytes - filled ? left : kBounceBytes - filled;
      std::memcpy(bounce + filled, src, take);
      filled += take;
      src += take;
      left -= take;
      if (filled == kBounceBytes) {
        if (const int err = writeAll(fd, bounce, filled, offset)) return err;
        offset += filled;
        filled = 0;
      }
    }
  }
  const uint64_t total = offset + filled;
  if (filled > 0) {
    const size_t padded = (filled + kAlign - 1) / kAlign * kAlign;
    std::memset(bounce + filled, 0, padded - filled);
    if (const int err = writeAll(fd, bounce, padded, offset)) return err;
    if (padded != filled) {
      while (ftruncate(fd, static_cast<off_t>(total)) != 0) {
        if (errno != EINTR) return errno;
      }
    }
  }
  *written = total;
  return 0;
}

const char* directWriteUnavailableReason() { return nullptr; }

}  // namespace tender

#else

namespace tender {
int writeDirect(int, const ConstBytes*, size_t, uint64_t*) { return ENOSYS; }
const char* directWriteUnavailableReason() { return "direct writes are implemented for Linux only"; }
}  // namespace tender

#endif
