// tsnet-nsexec FD COOKIE READY UID GID FILE ARGV0 [ARGS...]
//
// Starts a program inside a network namespace without any thread of the
// calling process changing namespace: the caller (src/netns/inside.ts) passes
// the namespace as an inherited fd; this enters it, checks that it entered the
// namespace whose cookie (SO_NETNS_COOKIE) is COOKIE (another thread of the
// caller may have swapped what the fd number referred to between the caller's
// check and the fork: the check that counts is this one, after entering),
// closes the fd so the program does not inherit it, tells the caller it is
// inside by writing "1" to the pipe end READY ("B" when the namespace was not
// COOKIE's; READY may be "-"; the caller waits for it, so once spawn()
// returns, /proc/PID/ns/net is already the namespace), drops to UID/GID when
// they are not "-" (after entering: an unprivileged process could not), and
// execs FILE (searched on PATH, as execvp does) with ARGV0 ARGS... as its argv.
//
// Exit status when the program cannot be started: 125 (bad arguments, or the
// namespace cannot be entered, or the ids cannot be set), 126 (found but not
// executable), 127 (not found), as env(1) and the shells report them. The
// reason goes to stderr, one line.
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

static int number(const char* s, long max, long* out) {
  char* end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || errno || v < 0 || v > max) return -1;
  *out = v;
  return 0;
}

static int tell(long ready, const char* what) {
  if (ready < 0) return 0;
  if (write((int)ready, what, 1) != 1) {
    fprintf(stderr, "tsnet-nsexec: telling the caller: %s\n", strerror(errno));
    return -1;
  }
  return 0;
}

// The cookie of this process's network namespace, 0 on failure.
static unsigned long long cookie(void) {
  unsigned long long c = 0;
  socklen_t len = sizeof c;
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return 0;
  if (getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &c, &len) != 0) c = 0;
  close(s);
  return c;
}

int main(int argc, char** argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: tsnet-nsexec FD COOKIE READY UID GID FILE ARGV0 [ARGS...]\n");
    return 125;
  }
  long fd, ready = -1, uid = -1, gid = -1;
  char* end = NULL;
  errno = 0;
  unsigned long long want = strtoull(argv[2], &end, 10);
  if (number(argv[1], 1 << 20, &fd) != 0 || *argv[2] == '\0' || *end != '\0' || errno || want == 0 ||
      (strcmp(argv[3], "-") != 0 && number(argv[3], 1 << 20, &ready) != 0) ||
      (strcmp(argv[4], "-") != 0 && number(argv[4], 0xfffffffeL, &uid) != 0) ||
      (strcmp(argv[5], "-") != 0 && number(argv[5], 0xfffffffeL, &gid) != 0)) {
    fprintf(stderr, "tsnet-nsexec: invalid arguments %s %s %s %s %s\n", argv[1], argv[2], argv[3], argv[4], argv[5]);
    return 125;
  }
  // EINVAL: the number is not a network namespace any more; another cookie: it is another namespace.
  int entered = setns((int)fd, CLONE_NEWNET) == 0;
  if (!entered && errno != EINVAL && errno != EBADF) {
    fprintf(stderr, "tsnet-nsexec: entering the network namespace on fd %ld: %s\n", fd, strerror(errno));
    return 125;
  }
  if (!entered || cookie() != want) {
    fprintf(stderr, "tsnet-nsexec: fd %ld is not the handle's network namespace any more (closed, and the number reused)\n", fd);
    tell(ready, "B");
    return 125;
  }
  close((int)fd);
  if (ready >= 0) {
    // One byte says "inside"; EOF without it (we died first) says we never got there.
    if (tell(ready, "1") != 0) {
      return 125;
    }
    close((int)ready);
  }
  // As libuv does for Node's uid/gid options: no supplementary groups, then gid, then uid.
  if ((uid >= 0 || gid >= 0) && setgroups(0, NULL) != 0 && errno != EPERM) {
    fprintf(stderr, "tsnet-nsexec: setgroups: %s\n", strerror(errno));
    return 125;
  }
  if (gid >= 0 && setgid((gid_t)gid) != 0) {
    fprintf(stderr, "tsnet-nsexec: setgid %ld: %s\n", gid, strerror(errno));
    return 125;
  }
  if (uid >= 0 && setuid((uid_t)uid) != 0) {
    fprintf(stderr, "tsnet-nsexec: setuid %ld: %s\n", uid, strerror(errno));
    return 125;
  }
  execvp(argv[6], argv + 7);
  int err = errno;
  fprintf(stderr, "tsnet-nsexec: cannot run %s: %s\n", argv[6], strerror(err));
  return err == ENOENT ? 127 : 126;
}
