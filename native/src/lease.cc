#include "lease.h"

#include <cerrno>

#if defined(__linux__)
#include <fcntl.h>
#include <unistd.h>
#endif

namespace tender {

#if defined(__linux__)

const char* leaseUnavailableReason() { return nullptr; }

int fileOpenForWriting(const char* path, int* err) {
  // O_NONBLOCK: if another process holds a write lease, open fails with EWOULDBLOCK instead of
  // waiting for that lease to be broken.
  const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  int result;
  if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
    // Granted: nobody has the file open for writing. Give the lease back at once so that a
    // writer opening it now is not delayed by a lease break.
    fcntl(fd, F_SETLEASE, F_UNLCK);
    result = 0;
  } else if (errno == EAGAIN || errno == EBUSY) {
    result = 1;
  } else {
    *err = errno;
    result = -1;
  }
  close(fd);
  return result;
}

#else

const char* leaseUnavailableReason() { return "file leases (F_SETLEASE) are implemented for Linux only"; }
int fileOpenForWriting(const char*, int* err) {
  *err = ENOSYS;
  return -1;
}

#endif

}  // namespace tender
