// Writes that bypass the page cache (O_DIRECT), for pack files: see directio.cc.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tender {

struct ConstBytes {
  const uint8_t* data;
  size_t length;
};

// Writes the concatenation of parts[0..count) to fd (opened with O_DIRECT) from offset 0, then
// sets the file's length to exactly their total. Returns 0 or an errno (EINVAL: the filesystem or
// device refuses direct I/O of this alignment; the caller then writes through the page cache).
int writeDirect(int fd, const ConstBytes* parts, size_t count, uint64_t* written);

// Null when writeDirect is available, else why not (not Linux).
const char* directWriteUnavailableReason();

}  // namespace tender
