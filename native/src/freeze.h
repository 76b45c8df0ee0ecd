// Filesystem freeze (FIFREEZE/FITHAW) and syncfs on an open file of the filesystem (Linux; elsewhere
// every call returns ENOSYS). Used by the addon (thaw, syncfs) and by tender-freeze-guard.
#pragma once

namespace tender {

// Why the calls below cannot work on this platform, or nullptr when they can.
const char* freezeUnavailableReason();

// Each returns 0 or an errno. freezeFs syncs the filesystem first (the kernel does) and blocks new
// writes until thawFs; thawFs of a filesystem that is not frozen gives EINVAL.
int freezeFs(int fd);
int thawFs(int fd);
int syncFs(int fd);

}  // namespace tender
