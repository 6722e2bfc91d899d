/*
 * tsnet's CNI shim: the executable installed as `tsnet-bridge` and
 * `tsnet-ipam` by `tsnet cni install`.
 *
 * A runtime runs a CNI plugin once per container operation. Booting Node for
 * each call costs more than the reference Go plugin's whole ADD, so this
 * small binary hands the call (environment + stdin) to the resident agent
 * (`tsnet agent`) over a unix socket and relays its stdout and exit status.
 * When no agent can take the call, it executes the standalone TypeScript
 * plugin instead: a plugin call never depends on the agent being up.
 *
 *   connect(socket) ---- fails ------------------------------> standalone
 *   read hello      ---- none in time / denied / other netns -> standalone
 *   send request    ---- agent gone before taking it --------> standalone
 *   read reply      ---- EOF (agent died) / deadline --------> CNI error 11
 *
 * Once the request is sent the agent may be acting on it, so from then on a
 * failure is reported (code 11, "try again later"), never retried behind the
 * runtime's back. The hello carries the agent's network namespace identity
 * (st_dev, st_ino of /proc/self/ns/net): an agent in another namespace than
 * this process would create links and rules in the wrong one.
 *
 * Wire format: frames of a little-endian u32 length + bytes.
 *   agent -> shim  hello   "tsnet-agent/1 DEV INO" | "deny REASON"
 *   shim  -> agent request "tsnet-cni/1\0PLUGIN\0DEV INO\0DEADLINE_MS\0", then
 *                  the environment (KEY=VALUE\0...), then stdin
 *   agent -> shim  reply   u32 exit status + stdout   | "deny REASON" frame
 *
 * Settings come from tsnet-cni.conf next to the executable (written by the
 * installer: socket, state_dir, node, entry, timeout_ms), overridden by TSNET_AGENT_SOCKET (set but empty: never use an
 * agent) and TSNET_CNI_TIMEOUT_MS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_FRAME (64u << 20)
#define CONF_NAME "tsnet-cni.conf"

static const char *PLUGINS[] = {"tsnet-bridge", "tsnet-ipam"};
static const char *VERSIONS[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};

struct settings {
  char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char state_dir[PATH_MAX];
  char node[PATH_MAX];
  char entry[PATH_MAX];
  long timeout_ms;       /* the whole call through the agent */
  long hello_timeout_ms; /* an agent that does not greet in time is treated as absent */
};

struct buf {
  char *data;
  size_t len;
};

static const char *plugin;
static struct buf input;

/* --- output ---------------------------------------------------------------- */

/* The config's cniVersion when it is one tsnet speaks (errors are written in it), else the latest. */
static const char *error_version(void) {
  static char v[16];
  const char *p = input.data ? memmem(input.data, input.len, "\"cniVersion\"", 12) : NULL;
  if (p) {
    const char *end = input.data + input.len;
    p += 12;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':')) p++;
    if (p < end && *p == '"') {
      size_t n = 0;
      for (p++; p < end && *p != '"' && n < sizeof v - 1; p++) v[n++] = *p;
      v[n] = 0;
      for (size_t i = 0; i < sizeof VERSIONS / sizeof *VERSIONS; i++)
        if (strcmp(v, VERSIONS[i]) == 0) return v;
    }
  }
  return "1.1.0";
}

/* Prints a CNI error document and exits 1. */
static void __attribute__((noreturn, format(printf, 2, 3))) cni_error(int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  printf("{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":\"", error_version(), code);
  for (const unsigned char *c = (const unsigned char *)msg; *c; c++) {
    if (*c == '"' || *c == '\\') printf("\\%c", *c);
    else if (*c < 0x20) printf("\\u%04x", *c);
    else putchar(*c);
  }
  printf("\"}\n");
  fflush(stdout);
  exit(1);
}

/* --- settings -------------------------------------------------------------- */

static void copy_setting(char *dst, size_t size, const char *value, const char *key) {
  if (strlen(value) >= size) cni_error(999, "%s: %s is too long", CONF_NAME, key);
  strcpy(dst, value);
}

static long parse_ms(const char *v, const char *what) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno || *end || n <= 0 || n > 86400000) cni_error(999, "%s must be a number of milliseconds from 1 to 86400000 (a day), got \"%s\"", what, v);
  return n;
}

static void load_settings(struct settings *s, const char *dir) {
  char file[PATH_MAX + 32];
  snprintf(file, sizeof file, "%s/%s", dir, CONF_NAME);
  FILE *f = fopen(file, "re");
  if (!f) cni_error(999, "cannot read %s (%s): reinstall with `tsnet cni install`", file, strerror(errno));
  char line[PATH_MAX + 64];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (line[0] == '#' || line[0] == 0) continue;
    char *eq = strchr(line, '=');
    if (!eq) continue;
    *eq = 0;
    const char *k = line, *v = eq + 1;
    if (strcmp(k, "socket") == 0) copy_setting(s->socket, sizeof s->socket, v, k);
    else if (strcmp(k, "state_dir") == 0) copy_setting(s->state_dir, sizeof s->state_dir, v, k);
    else if (strcmp(k, "node") == 0) copy_setting(s->node, sizeof s->node, v, k);
    else if (strcmp(k, "entry") == 0) copy_setting(s->entry, sizeof s->entry, v, k);
    else if (strcmp(k, "timeout_ms") == 0) s->timeout_ms = parse_ms(v, "timeout_ms");
    else if (strcmp(k, "hello_timeout_ms") == 0) s->hello_timeout_ms = parse_ms(v, "hello_timeout_ms");
  }
  fclose(f);
  const char *e;
  if ((e = getenv("TSNET_AGENT_SOCKET"))) copy_setting(s->socket, sizeof s->socket, e, "TSNET_AGENT_SOCKET");
  if ((e = getenv("TSNET_CNI_TIMEOUT_MS")) && *e) s->timeout_ms = parse_ms(e, "TSNET_CNI_TIMEOUT_MS");
  if (!s->node[0] || !s->entry[0]) cni_error(999, "%s names no node or entry: reinstall with `tsnet cni install`", file);
  /* One state directory for both paths: the agent gets it with the environment, the standalone plugin inherits it. */
  if (s->state_dir[0] && setenv("TSNET_STATE_DIR", s->state_dir, 0) != 0) cni_error(999, "setenv: %s", strerror(errno));
}

/* --- i/o ------------------------------------------------------------------- */

static void read_all(int fd, struct buf *b) {
  size_t cap = 0;
  for (;;) {
    if (b->len == cap) {
      cap = cap ? cap * 2 : 65536;
      if (cap > MAX_FRAME) cni_error(999, "network config on stdin is larger than %u bytes", MAX_FRAME);
      b->data = realloc(b->data, cap);
      if (!b->data) cni_error(999, "out of memory");
    }
    ssize_t n = read(fd, b->data + b->len, cap - b->len);
    if (n == 0) return;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EBADF || errno == EISDIR) return; /* no stdin: a VERSION call from a shell */
      cni_error(999, "reading stdin: %s", strerror(errno));
    }
    b->len += (size_t)n;
  }
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes all of `data`; false when the peer is gone. */
static int send_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return 0;
    }
    p += n;
    len -= (size_t)n;
  }
  return 1;
}

static int send_frame(int fd, const void *data, size_t len) {
  unsigned char h[4] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff};
  return send_all(fd, h, 4) && send_all(fd, data, len);
}

enum { RECV_OK, RECV_EOF, RECV_TIMEOUT, RECV_ERROR };

/* Reads exactly `len` bytes before `deadline` (monotonic ms). */
static int recv_exact(int fd, void *data, size_t len, long long deadline) {
  char *p = data;
  while (len) {
    long long left = deadline - now_ms();
    if (left <= 0) return RECV_TIMEOUT;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return RECV_ERROR;
    if (r == 0) return RECV_TIMEOUT;
    ssize_t n = recv(fd, p, len, 0);
    if (n == 0) return RECV_EOF;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return errno == ECONNRESET ? RECV_EOF : RECV_ERROR;
    }
    p += n;
    len -= (size_t)n;
  }
  return RECV_OK;
}

static int recv_frame(int fd, struct buf *b, long long deadline) {
  unsigned char h[4];
  int r = recv_exact(fd, h, 4, deadline);
  if (r != RECV_OK) return r;
  uint32_t len = h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
  if (len > MAX_FRAME) return RECV_ERROR;
  b->data = malloc(len + 1);
  if (!b->data) return RECV_ERROR;
  b->len = len;
  r = recv_exact(fd, b->data, len, deadline);
  b->data[len] = 0;
  return r;
}

/* --- the two paths ----------------------------------------------------------- */

/* Runs the standalone plugin in this process's place, with the stdin already read. */
static void __attribute__((noreturn)) standalone(const struct settings *s) {
  int fd = memfd_create("cni-stdin", 0);
  if (fd < 0 || (input.len && write(fd, input.data, input.len) != (ssize_t)input.len) || lseek(fd, 0, SEEK_SET) != 0 ||
      dup2(fd, 0) < 0)
    cni_error(999, "preparing stdin for the standalone plugin: %s", strerror(errno));
  if (fd != 0) close(fd);
  char *argv[] = {(char *)s->node, (char *)s->entry, (char *)plugin, NULL};
  execve(s->node, argv, environ);
  cni_error(999, "cannot run the standalone plugin %s %s: %s", s->node, s->entry, strerror(errno));
}

static void fall_back(const struct settings *s, int fd, const char *why) {
  if (why) fprintf(stderr, "%s: not using the agent at %s (%s): running standalone\n", plugin, s->socket, why);
  if (fd >= 0) close(fd);
  standalone(s);
}

static void through_agent(const struct settings *s, const char *nsid) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fall_back(s, -1, NULL);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strcpy(sa.sun_path, s->socket);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) fall_back(s, fd, NULL); /* no agent: the normal standalone case */
  /* The call (environment, config) goes only to an agent running as root: never to whoever else could bind the path. */
  struct ucred cred;
  socklen_t credlen = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) != 0 || cred.uid != 0) fall_back(s, fd, "the listener is not root");

  long long start = now_ms();
  struct buf hello = {0};
  int r = recv_frame(fd, &hello, start + s->hello_timeout_ms);
  if (r != RECV_OK) fall_back(s, fd, r == RECV_TIMEOUT ? "no hello in time" : "closed before its hello");
  if (strncmp(hello.data, "deny ", 5) == 0) fall_back(s, fd, hello.data);
  if (strncmp(hello.data, "tsnet-agent/1 ", 14) != 0) fall_back(s, fd, "unknown protocol");
  if (strcmp(hello.data + 14, nsid) != 0) {
    char why[160];
    snprintf(why, sizeof why, "agent in network namespace %s, this call in %s", hello.data + 14, nsid);
    fall_back(s, fd, why);
  }

  char head[256];
  int hl = snprintf(head, sizeof head, "tsnet-cni/1%c%s%c%s%c%ld%c", 0, plugin, 0, nsid, 0, s->timeout_ms, 0);
  size_t envlen = 0;
  for (char **e = environ; *e; e++) envlen += strlen(*e) + 1;
  char *env = malloc(envlen ? envlen : 1);
  if (!env) cni_error(999, "out of memory");
  size_t off = 0;
  for (char **e = environ; *e; e++) {
    size_t n = strlen(*e) + 1;
    memcpy(env + off, *e, n);
    off += n;
  }
  /* Not sent whole: the agent acts only on a complete request, so it has done nothing. */
  if (!send_frame(fd, head, (size_t)hl) || !send_frame(fd, env, envlen) || !send_frame(fd, input.data, input.len))
    fall_back(s, fd, "it closed the connection before taking the request");
  free(env);

  struct buf reply = {0};
  r = recv_frame(fd, &reply, start + s->timeout_ms);
  if (r == RECV_TIMEOUT)
    cni_error(11, "%s: no answer from the tsnet agent at %s within %ld ms; it may still finish: DEL cleans up, try again later", plugin, s->socket, s->timeout_ms);
  if (r != RECV_OK)
    cni_error(11, "%s: the tsnet agent at %s went away in the middle of the request (restarted or killed); try again later", plugin, s->socket);
  if (reply.len >= 5 && strncmp(reply.data, "deny ", 5) == 0)
    fall_back(s, fd, reply.data); /* refused before acting (e.g. the namespace check on its side) */
  if (reply.len < 4) cni_error(11, "%s: malformed reply from the tsnet agent at %s", plugin, s->socket);
  const unsigned char *u = (const unsigned char *)reply.data;
  int status = (int)(u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24);
  if (reply.len > 4 && fwrite(reply.data + 4, 1, reply.len - 4, stdout) != reply.len - 4) exit(1);
  fflush(stdout);
  exit(status);
}

/* PLUGINS' entry whose name is the last component of `path`, or NULL. */
static const char *known_plugin(const char *path) {
  const char *slash = strrchr(path, '/');
  const char *name = slash ? slash + 1 : path;
  for (size_t i = 0; i < sizeof PLUGINS / sizeof *PLUGINS; i++)
    if (strcmp(name, PLUGINS[i]) == 0) return PLUGINS[i];
  return NULL;
}

int main(int argc, char **argv) {
  (void)argc;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n < 0) cni_error(999, "readlink /proc/self/exe: %s", strerror(errno));
  exe[n] = 0;

  /* Which plugin: the name it was run by, else the file's own name. */
  plugin = known_plugin(argv[0] ? argv[0] : "");
  if (!plugin) plugin = known_plugin(exe);
  if (!plugin) {
    fprintf(stderr, "tsnet CNI shim: install it as tsnet-bridge or tsnet-ipam (`tsnet cni install`); run by a container runtime with CNI_COMMAND set\n");
    return 2;
  }

  read_all(0, &input);
  *strrchr(exe, '/') = 0;
  struct settings s = {.socket = "/run/tsnet/agent.sock", .timeout_ms = 120000, .hello_timeout_ms = 2000};
  load_settings(&s, exe);

  struct stat st;
  if (stat("/proc/self/ns/net", &st) != 0) fall_back(&s, -1, "cannot identify this network namespace");
  char nsid[64];
  snprintf(nsid, sizeof nsid, "%llu %llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
  if (s.socket[0]) through_agent(&s, nsid);
  standalone(&s);
}
