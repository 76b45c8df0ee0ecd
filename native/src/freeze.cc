#include "freeze.h"

#include <cerrno>

#if defined(__linux__)
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>
#endif

namespace tender {

#if defined(__linux__)

const char* freezeUnavailableReason() { return nullptr; }

int freezeFs(int fd) { return ioctl(fd, FIFREEZE, 0) == 0 ? 0 : errno; }

int thawFs(int fd) { return ioctl(fd, FITHAW, 0) == 0 ? 0 : errno; }

int syncFs(int fd) { return syncfs(fd) == 0 ? 0 : errno; }

#else

const char* freezeUnavailableReason() { return "filesystem freeze (FIFREEZE/FITHAW) and syncfs are implemented for Linux only"; }
int freezeFs(int) { return ENOSYS; }
int thawFs(int) { return ENOSYS; }
int syncFs(int) { return ENOSYS; }

#endif

}  // namespace tender
