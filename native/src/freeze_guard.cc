// tender-freeze-guard PATH DEADLINE_MS RECORD_FILE
//
// Freezes the filesystem holding PATH when told to and guarantees that it is thawed: on "thaw",
// at DEADLINE_MS after the freeze, when its stdin ends (the tender process that started it died:
// the kernel closes the pipe even on SIGKILL) and on SIGTERM/SIGINT/SIGHUP. A frozen filesystem
// outlives the process that froze it, so the freezing is done here, in a process of its own that
// tender starts in a session of its own (a SIGKILL of tender or of its process group does not
// reach it) and that does nothing else. RECORD_FILE (written by tender before the start) is
// removed once the filesystem is known thawed; if this process is SIGKILLed too, the record is
// what the next tender start thaws (src/quiesce/freeze.ts).
//
// Protocol, one line each way (src/quiesce/freeze.ts is the other end):
//   out: "ready"                                  PATH is open
//   in:  "freeze"  out: "frozen" | "error freeze ERRNO MESSAGE"
//   in:  "thaw"    out: "thawed MS ERRNO"         MS: how long it was frozen; ERRNO 0: thawed
//   at the deadline  out: "deadline MS ERRNO", then it exits
//   stdin closed, or a signal: thaws ("abandoned MS ERRNO") and exits
// Exit status 0 when the filesystem is not left frozen by this process, 1 when the thaw failed,
// 2 on bad arguments or when PATH cannot be opened ("error open ERRNO MESSAGE").
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "freeze.h"

namespace {

volatile sig_atomic_t stopSignal = 0;

void onStop(int sig) { stopSignal = sig; }

long long nowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

void reply(const char* line) {
  // A dead reader (tender was killed) makes this fail with EPIPE: SIGPIPE is ignored, and the
  // thaw does not depend on being heard.
  const size_t n = strlen(line);
  if (write(STDOUT_FILENO, line, n) < 0) return;
}

struct Guard {
  int fd = -1;
  bool frozen = false;
  long long frozenAt = 0;
  long long deadlineMs = 0;
  const char* record = nullptr;

  // Thaws (when this process froze the filesystem), says why and exits.
  [[noreturn]] void finish(const char* why) {
    int err = 0;
    const long long ms = frozen ? nowMs() - frozenAt : 0;
    if (frozen) {
      err = tender::thawFs(fd);
      // EINVAL: not frozen (someone thawed it already): the goal holds.
      if (err == EINVAL) err = 0;
    }
    if (err == 0) unlink(record);
    char line[96];
    snprintf(line, sizeof line, "%s %lld %d\n", why, ms, err);
    reply(line);
    _exit(err == 0 ? 0 : 1);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: tender-freeze-guard PATH DEADLINE_MS RECORD_FILE\n");
    return 2;
  }
  Guard g;
  g.deadlineMs = atoll(argv[2]);
  g.record = argv[3];
  if (g.deadlineMs <= 0) {
    fprintf(stderr, "tender-freeze-guard: DEADLINE_MS must be a positive number of milliseconds\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = onStop;  // no SA_RESTART: ppoll returns EINTR
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  // The stop signals are delivered only inside ppoll, so one cannot slip in between the check of
  // stopSignal and the wait.
  sigset_t stops, waiting;
  sigemptyset(&stops);
  sigaddset(&stops, SIGTERM);
  sigaddset(&stops, SIGINT);
  sigaddset(&stops, SIGHUP);
  sigprocmask(SIG_BLOCK, &stops, &waiting);
  sigdelset(&waiting, SIGTERM);
  sigdelset(&waiting, SIGINT);
  sigdelset(&waiting, SIGHUP);

  g.fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (g.fd < 0) {
    char line[256];
    snprintf(line, sizeof line, "error open %d %s\n", errno, strerror(errno));
    reply(line);
    return 2;
  }
  reply("ready\n");

  char buf[64];
  size_t used = 0;
  for (;;) {
    if (stopSignal) g.finish("abandoned");
    timespec timeout{};
    timespec* wait = nullptr;  // no deadline before the freeze
    if (g.frozen) {
      const long long left = g.frozenAt + g.deadlineMs - nowMs();
      if (left <= 0) g.finish("deadline");
      timeout.tv_sec = static_cast<time_t>(left / 1000);
      timeout.tv_nsec = static_cast<long>(left % 1000) * 1000000;
      wait = &timeout;
    }
    pollfd p{STDIN_FILENO, POLLIN, 0};
    const int rc = ppoll(&p, 1, wait, &waiting);
    if (rc < 0) {
      if (errno == EINTR) continue;
      g.finish("abandoned");
    }
    if (rc == 0) g.finish("deadline");
    const ssize_t n = read(STDIN_FILENO, buf + used, sizeof buf - used);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) g.finish("abandoned");
    used += static_cast<size_t>(n);
    char* newline;
    while ((newline = static_cast<char*>(memchr(buf, '\n', used))) != nullptr) {
      *newline = '\0';
      if (strcmp(buf, "freeze") == 0 && !g.frozen) {
        const int err = tender::freezeFs(g.fd);
        if (err == 0) {
          g.frozen = true;
          g.frozenAt = nowMs();
          reply("frozen\n");
        } else {
          char line[256];
          snprintf(line, sizeof line, "error freeze %d %s\n", err, strerror(err));
          reply(line);
        }
      } else if (strcmp(buf, "thaw") == 0) {
        g.finish("thawed");
      }
      const size_t consumed = static_cast<size_t>(newline - buf) + 1;
      memmove(buf, newline + 1, used - consumed);
      used -= consumed;
    }
    if (used == sizeof buf) g.finish("abandoned");  // not our protocol: thaw rather than guess
  }
}
