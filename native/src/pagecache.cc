#include "pagecache.h"

#include <cerrno>

#if defined(__linux__)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace tender {

#if defined(__linux__)

const char* pageCacheUnavailableReason() { return nullptr; }

size_t pageSize() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

size_t pagesSpanned(uint64_t offset, uint64_t length) {
  if (length == 0) return 0;
  const uint64_t page = pageSize();
  return static_cast<size_t>((offset + length + page - 1) / page - offset / page);
}

int residentPages(int fd, uint64_t offset, uint64_t length, uint8_t* out) {
  if (length == 0) return 0;
  const uint64_t page = pageSize();
  const uint64_t start = offset / page * page;
  const size_t span = pagesSpanned(offset, length) * page;
  // mincore needs a mapping; a read-only shared mapping of the file reflects its page cache and
  // touches nothing (no page is faulted in).
  void* map = mmap(nullptr, span, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  if (map == MAP_FAILED) return errno;
  const int rc = mincore(map, span, reinterpret_cast<unsigned char*>(out)) == 0 ? 0 : errno;
  munmap(map, span);
  return rc;
}

int dropPages(int fd, uint64_t offset, uint64_t length, const uint8_t* before) {
  const size_t pages = pagesSpanned(offset, length);
  const uint64_t page = pageSize();
  const uint64_t first = offset / page;
  // Coalesce runs of pages that were not cached into one fadvise call each.
  for (size_t i = 0; i < pages;) {
    if (before[i] & 1) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < pages && !(before[j] & 1)) j++;
    const int rc = posix_fadvise(fd, static_cast<off_t>((first + i) * page), static_cast<off_t>((j - i) * page), POSIX_FADV_DONTNEED);
    if (rc != 0) return rc;
    i = j;
  }
  return 0;
}

#else

const char* pageCacheUnavailableReason() { return "page-cache control (mincore, posix_fadvise) is implemented for Linux only"; }
size_t pageSize() { return 4096; }
size_t pagesSpanned(uint64_t, uint64_t) { return 0; }
int residentPages(int, uint64_t, uint64_t, uint8_t*) { return ENOSYS; }
int dropPages(int, uint64_t, uint64_t, const uint8_t*) { return ENOSYS; }

#endif

}  // namespace tender
