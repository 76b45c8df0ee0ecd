// Page-cache residency and eviction for cache-neutral reads (Linux; elsewhere unavailable).
#pragma once
#include <cstddef>
#include <cstdint>

namespace tender {

// Why residentPages/dropPages cannot work on this platform, or nullptr when they can.
const char* pageCacheUnavailableReason();

size_t pageSize();

// One byte per page of [offset, offset+length) rounded out to pages (bit 0 set: in the page
// cache) into `out`, which holds pagesSpanned(offset, length) bytes. Returns 0 or an errno.
int residentPages(int fd, uint64_t offset, uint64_t length, uint8_t* out);

size_t pagesSpanned(uint64_t offset, uint64_t length);

// posix_fadvise(DONTNEED) on the pages of [offset, offset+length) whose `before` byte (as
// filled by residentPages for the same range) says they were not cached; pages that were
// cached stay. Returns 0 or an errno.
int dropPages(int fd, uint64_t offset, uint64_t length, const uint8_t* before);

}  // namespace tender
