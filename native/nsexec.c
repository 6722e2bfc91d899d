// tsnet-nsexec FD READY UID GID FILE ARGV0 [ARGS...]
//
// Starts a program inside a network namespace without any thread of the
// calling process changing namespace: the caller (src/netns/inside.ts) passes
// the namespace as an inherited fd; this enters it, closes the fd so the
// program does not inherit it, tells the caller it is inside by closing the
// pipe end READY (unless "-"; the caller waits for that, so once spawn()
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
#include <unistd.h>

static int number(const char* s, long max, long* out) {
  char* end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || errno || v < 0 || v > max) return -1;
  *out = v;
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: tsnet-nsexec FD READY UID GID FILE ARGV0 [ARGS...]\n");
    return 125;
  }
  long fd, ready = -1, uid = -1, gid = -1;
  if (number(argv[1], 1 << 20, &fd) != 0 ||
      (strcmp(argv[2], "-") != 0 && number(argv[2], 1 << 20, &ready) != 0) ||
      (strcmp(argv[3], "-") != 0 && number(argv[3], 0xfffffffeL, &uid) != 0) ||
      (strcmp(argv[4], "-") != 0 && number(argv[4], 0xfffffffeL, &gid) != 0)) {
    fprintf(stderr, "tsnet-nsexec: invalid arguments %s %s %s %s\n", argv[1], argv[2], argv[3], argv[4]);
    return 125;
  }
  if (setns((int)fd, CLONE_NEWNET) != 0) {
    fprintf(stderr, "tsnet-nsexec: entering the network namespace on fd %ld: %s\n", fd, strerror(errno));
    return 125;
  }
  close((int)fd);
  if (ready >= 0) {
    // One byte says "inside"; EOF without it (we died first) says we never got there.
    if (write((int)ready, "1", 1) != 1) {
      fprintf(stderr, "tsnet-nsexec: telling the caller: %s\n", strerror(errno));
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
  execvp(argv[5], argv + 6);
  int err = errno;
  fprintf(stderr, "tsnet-nsexec: cannot run %s: %s\n", argv[5], strerror(err));
  return err == ENOENT ? 127 : 126;
}
