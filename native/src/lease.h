// Whether a file is open for writing by anyone, probed with a read lease (Linux F_SETLEASE).
#pragma once

namespace tender {

// Why fileOpenForWriting cannot work on this platform, or nullptr when it can.
const char* leaseUnavailableReason();

// 1: some process has `path` open for writing (a read lease is refused), 0: nobody has, -1: cannot
// tell (the error is in *err: not the file's owner without CAP_LEASE, a file system without
// leases, the file is gone, ...).
int fileOpenForWriting(const char* path, int* err);

}  // namespace tender
