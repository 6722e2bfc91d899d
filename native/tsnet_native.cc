// tsnet native addon: the few syscalls Node cannot make.
//
// Namespaces: setns(2) moves only the calling thread, and Node's main thread
// runs JavaScript, async_hooks, timers and whatever a library does lazily.
// So no JavaScript thread of the process ever changes namespace. Everything
// that must be *created* inside a namespace (a socket, an open /proc/sys or
// /proc/thread-self/net file, a new namespace) is created by one dedicated
// helper thread ("tsnet-netns") that enters the namespace, creates, returns,
// checks it is back home, and hands the fd over. A netlink socket, an open
// proc file and a namespace fd keep acting where they were created, from any
// thread. If the helper cannot get back home it aborts the process: a thread
// in an unknown namespace must not run another line. setns and unshare are
// not exported to JavaScript at all.
//
// Child processes in a namespace are started by tsnet-nsexec (nsexec.c),
// which enters the namespace before exec.
//
// Netlink sockets live here too (NlSocket): the fd made by the helper thread,
// polled by libuv on the caller's loop, recvmsg with MSG_PEEK for sizes,
// SO_RCVBUF/SO_SNDBUF (FORCE when root), NETLINK_EXT_ACK so the kernel's own
// explanation of an error reaches the caller.
#include <napi.h>
#include <uv.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/nsfs.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace {

const char* ErrName(int err) {
  const char* n = strerrorname_np(err);
  return n ? n : "EUNKNOWN";
}

// An Error shaped like Node's ErrnoException (message, errno, code, syscall,
// path), except that errno is positive, as errno(3) and tsnet's errors have it.
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall, const std::string& path = "") {
  std::string msg = syscall + (path.empty() ? "" : " " + path) + ": " + ErrName(err) + " (" + strerror(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, ErrName(err)));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) e.Set("path", Napi::String::New(env, path));
  return e;
}

// Returns false (with a pending JS exception) when argument i is not of the expected type.
bool WantNumber(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() > i && info[i].IsNumber()) return true;
  Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number").ThrowAsJavaScriptException();
  return false;
}
bool WantString(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() > i && info[i].IsString()) return true;
  Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a string").ThrowAsJavaScriptException();
  return false;
}

[[noreturn]] void Die(const char* what) {
  fprintf(stderr, "tsnet: %s: %s; aborting (a thread in an unknown network namespace must not run on)\n", what, strerror(errno));
  abort();
}

// ---------------------------------------------------------------------------
// The namespace helper thread.

// Check: enter the namespace and read its cookie (compared with `cookie` when that is not 0).
enum class JobKind { Socket, Open, Create, Check };

struct Job {
  explicit Job(JobKind k) : kind(k) {}
  JobKind kind;
  int nsFd = -1;        // Socket, Open, Check: the namespace to act in
  uint64_t cookie = 0;  // ... and the cookie it must still have (SO_NETNS_COOKIE: never reused, unlike nsfs inodes)
  int domain = 0, type = 0, protocol = 0;  // Socket
  std::string path;     // Open: the file; Create: where to bind the new namespace
  int flags = 0;        // Open
  mode_t mode = 0;      // Open, with O_CREAT
  // Results.
  int fd = -1;
  uint64_t found = 0;   // Check: the namespace's cookie
  int err = 0;
  std::string failed;
};

struct Helper {
  std::mutex submit;  // one job at a time, whichever JS thread (main or Worker) asks
  std::mutex mu;
  std::condition_variable cv;
  Job* job = nullptr;
  bool done = false;
  bool started = false;
  pid_t tid = 0;
  dev_t homeDev = 0;
  ino_t homeIno = 0;
};
// Never destroyed: at exit the helper thread may still wait on its condition variable.
Helper& g = *new Helper;

bool ThreadNs(struct stat* st) { return stat("/proc/thread-self/ns/net", st) == 0; }

// The cookie of the calling thread's network namespace: a 64-bit id the kernel never gives to another
// namespace (an nsfs inode number is recycled once its namespace dies). 0 with errno set on failure.
uint64_t ThreadCookie() {
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return 0;
  uint64_t c = 0;
  socklen_t len = sizeof c;
  int rc = getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &c, &len);
  int err = errno;
  close(s);
  errno = err;
  return rc == 0 ? c : 0;
}

void CheckHome(const char* when) {
  struct stat st;
  if (!ThreadNs(&st)) Die("cannot read the helper thread's network namespace");
  if (st.st_dev != g.homeDev || st.st_ino != g.homeIno) {
    errno = EINVAL;
    Die(when);
  }
}

void Fail(Job& j, int err, const std::string& what) {
  if (j.err) return;
  j.err = err;
  j.failed = what;
}

const char* const REUSED = "its namespace fd no longer refers to the handle's namespace (closed, and the number reused)";

// Enters j.nsFd, and checks it is the namespace j.cookie names (when set): false (j failed) otherwise.
bool Enter(Job& j) {
  if (setns(j.nsFd, CLONE_NEWNET) != 0) {
    // EINVAL: the number is now something that is not a network namespace; for a handle, that is a reused fd.
    if (errno == EINVAL && j.cookie != 0) Fail(j, EBADF, std::string("setns: ") + REUSED);
    else Fail(j, errno, "setns");
    return false;
  }
  return true;
}

void Act(Job& j) {
  j.found = ThreadCookie();
  if (j.found == 0) return Fail(j, errno, "getsockopt(SO_NETNS_COOKIE)");
  if (j.cookie != 0 && j.found != j.cookie) return Fail(j, EBADF, std::string("setns: ") + REUSED);
  switch (j.kind) {
    case JobKind::Check:
      break;
    case JobKind::Socket:
      j.fd = socket(j.domain, j.type | SOCK_CLOEXEC, j.protocol);
      if (j.fd < 0) Fail(j, errno, "socket");
      break;
    case JobKind::Open: {
      // O_NONBLOCK so that a FIFO (or anything that waits in open) cannot stall the one helper thread:
      // only regular files (what /proc/sys/net and /proc/net hold) are opened.
      j.fd = open(j.path.c_str(), j.flags | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, j.mode);
      if (j.fd < 0) return Fail(j, errno, "open " + j.path);
      struct stat st;
      int err = fstat(j.fd, &st) != 0 ? errno : S_ISREG(st.st_mode) ? 0 : -1;
      if (err != 0) {
        close(j.fd);
        j.fd = -1;
        if (err > 0) return Fail(j, err, "fstat " + j.path);
        return Fail(j, EINVAL, "open " + j.path + " (not a regular file; in a namespace only /proc/sys and /proc/net files are opened)");
      }
      if (!(j.flags & O_NONBLOCK)) fcntl(j.fd, F_SETFL, fcntl(j.fd, F_GETFL) & ~O_NONBLOCK);
      break;
    }
    case JobKind::Create:
      j.fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
      if (j.fd < 0) {
        Fail(j, errno, "open /proc/thread-self/ns/net");
      } else if (!j.path.empty() && mount("/proc/thread-self/ns/net", j.path.c_str(), "none", MS_BIND, nullptr) != 0) {
        Fail(j, errno, "mount " + j.path);
        close(j.fd);
        j.fd = -1;
      }
      break;
  }
}

void RunJob(Job& j) {
  CheckHome("the namespace helper thread was not in its home namespace before a job");
  // A fresh fd to come back with: a long-lived one could be closed and its number reused by anyone.
  int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) return Fail(j, errno, "open /proc/thread-self/ns/net");
  bool away = false;
  if (j.kind == JobKind::Create) {
    if (unshare(CLONE_NEWNET) != 0) Fail(j, errno, "unshare(CLONE_NEWNET)");
    else away = true;
  } else {
    away = Enter(j);
  }
  if (away) Act(j);
  if (away && setns(home, CLONE_NEWNET) != 0) Die("the namespace helper thread cannot return to its home namespace");
  close(home);
  CheckHome("the namespace helper thread came back to a namespace that is not its home");
}

void* HelperMain(void*) {
  pthread_setname_np(pthread_self(), "tsnet-netns");
  std::unique_lock<std::mutex> lk(g.mu);
  g.tid = static_cast<pid_t>(syscall(SYS_gettid));
  g.cv.notify_all();
  for (;;) {
    g.cv.wait(lk, [] { return g.job != nullptr && !g.done; });
    RunJob(*g.job);
    g.done = true;
    g.cv.notify_all();
  }
  return nullptr;
}

// Starts the helper on first use, from a JS thread (which never switches), so it is born at home.
bool StartHelper(Napi::Env env) {
  if (g.started) return true;
  struct stat st;
  if (!ThreadNs(&st)) {
    ErrnoError(env, errno, "stat", "/proc/thread-self/ns/net").ThrowAsJavaScriptException();
    return false;
  }
  g.homeDev = st.st_dev;
  g.homeIno = st.st_ino;
  // No signals for the helper: it must never run a handler while away.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  int rc = pthread_create(&t, &attr, HelperMain, nullptr);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0) {
    ErrnoError(env, rc, "pthread_create").ThrowAsJavaScriptException();
    return false;
  }
  std::unique_lock<std::mutex> lk(g.mu);
  g.cv.wait(lk, [] { return g.tid != 0; });
  g.started = true;
  return true;
}

// Runs a job on the helper thread and waits for it: a few microseconds, so callers stay synchronous.
bool Submit(Napi::Env env, Job& j) {
  std::lock_guard<std::mutex> one(g.submit);
  if (!StartHelper(env)) return false;
  std::unique_lock<std::mutex> lk(g.mu);
  g.job = &j;
  g.done = false;
  g.cv.notify_all();
  g.cv.wait(lk, [] { return g.done; });
  g.job = nullptr;
  if (j.err) {
    ErrnoError(env, j.err, j.failed).ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// A namespace cookie from JavaScript: a BigInt (exact), or 0 for "none".
bool WantCookie(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
  if (info.Length() > i && info[i].IsBigInt()) {
    bool lossless = true;
    *out = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return true;
  }
  Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a namespace cookie (a BigInt)").ThrowAsJavaScriptException();
  return false;
}

bool ReadIdentity(const Napi::CallbackInfo& info, Job& j) {
  if (!WantNumber(info, 0) || !WantCookie(info, 1, &j.cookie)) return false;
  j.nsFd = info[0].As<Napi::Number>().Int32Value();
  return true;
}

// socketIn(nsFd, cookie, domain, type, protocol) -> fd: socket(2) inside the namespace (CLOEXEC);
// nsFd -1: on the calling thread, in its own namespace.
Napi::Value SocketIn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Job j(JobKind::Socket);
  if (!ReadIdentity(info, j) || !WantNumber(info, 2) || !WantNumber(info, 3) || !WantNumber(info, 4)) return env.Undefined();
  j.domain = info[2].As<Napi::Number>().Int32Value();
  j.type = info[3].As<Napi::Number>().Int32Value();
  j.protocol = info[4].As<Napi::Number>().Int32Value();
  if (j.nsFd < 0) {
    // The caller's own namespace: JavaScript threads never leave it, so no helper is needed.
    int fd = socket(j.domain, j.type | SOCK_CLOEXEC, j.protocol);
    if (fd < 0) {
      ErrnoError(env, errno, "socket").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, fd);
  }
  if (!Submit(env, j)) return env.Undefined();
  return Napi::Number::New(env, j.fd);
}

// openIn(nsFd, cookie, path, flags, mode) -> fd: open(2) of a regular file inside the namespace (CLOEXEC).
Napi::Value OpenIn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Job j(JobKind::Open);
  if (!ReadIdentity(info, j) || !WantString(info, 2) || !WantNumber(info, 3) || !WantNumber(info, 4)) return env.Undefined();
  j.path = info[2].As<Napi::String>().Utf8Value();
  j.flags = info[3].As<Napi::Number>().Int32Value();
  j.mode = static_cast<mode_t>(info[4].As<Napi::Number>().Uint32Value() & 07777);
  if (!Submit(env, j)) return env.Undefined();
  return Napi::Number::New(env, j.fd);
}

// nsCookie(nsFd, cookie) -> BigInt: the cookie of the network namespace behind nsFd, entered by the
// helper; with cookie not 0n, a namespace with another cookie is refused with EBADF. nsFd -1: the
// caller's own namespace.
Napi::Value NsCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Job j(JobKind::Check);
  if (!ReadIdentity(info, j)) return env.Undefined();
  if (j.nsFd < 0) {
    uint64_t c = ThreadCookie();
    if (c == 0) {
      ErrnoError(env, errno, "getsockopt(SO_NETNS_COOKIE)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::BigInt::New(env, c);
  }
  if (!Submit(env, j)) return env.Undefined();
  return Napi::BigInt::New(env, j.found);
}

// dupChecked(nsFd, cookie) -> fd: a close-on-exec duplicate of nsFd, checked (after the dup) to be the
// namespace `cookie` names. For an fd handed to the kernel in a netlink attribute: another thread may
// swap what nsFd refers to at any moment, but not what this private duplicate does.
Napi::Value DupChecked(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Job j(JobKind::Check);
  if (!ReadIdentity(info, j)) return env.Undefined();
  int dup = fcntl(j.nsFd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) {
    ErrnoError(env, errno, "fcntl(F_DUPFD_CLOEXEC)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  j.nsFd = dup;
  if (!Submit(env, j)) {
    close(dup);
    return env.Undefined();
  }
  return Napi::Number::New(env, dup);
}

// close(fd): close(2) of an fd the addon made. Node's fs.closeSync would warn in a Worker ("closed
// but not opened in unmanaged mode"): Workers track the fds that fs opened.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0)) return env.Undefined();
  if (close(info[0].As<Napi::Number>().Int32Value()) != 0 && errno != EINTR)
    ErrnoError(env, errno, "close").ThrowAsJavaScriptException();
  return env.Undefined();
}

// createNetns(path) -> fd: a new network namespace, bound at `path` (an existing
// empty file) as `ip netns add` does when path is not empty; the fd keeps it alive.
Napi::Value CreateNetns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Job j(JobKind::Create);
  if (!WantString(info, 0)) return env.Undefined();
  j.path = info[0].As<Napi::String>().Utf8Value();
  if (!Submit(env, j)) return env.Undefined();
  return Napi::Number::New(env, j.fd);
}

// helperTid() -> the helper thread's tid (0 before its first job): tests exclude it from "every thread is at home".
Napi::Value HelperTid(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> one(g.submit);
  return Napi::Number::New(info.Env(), g.tid);
}

// nsType(fd) -> the CLONE_NEW* type of the namespace behind fd (ioctl NS_GET_NSTYPE).
Napi::Value NsType(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0)) return env.Undefined();
  int t = ioctl(info[0].As<Napi::Number>().Int32Value(), NS_GET_NSTYPE);
  if (t < 0) {
    ErrnoError(env, errno, "ioctl(NS_GET_NSTYPE)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, t);
}

// ---------------------------------------------------------------------------
// Netlink sockets.

class NlSocket : public Napi::ObjectWrap<NlSocket> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NlSocket", {
      InstanceMethod("send", &NlSocket::Send),
      InstanceMethod("transact", &NlSocket::Transact),
      InstanceMethod("sendAsync", &NlSocket::SendAsync),
      InstanceMethod("drain", &NlSocket::Drain),
      InstanceMethod("close", &NlSocket::Close),
      InstanceMethod("ref", &NlSocket::RefLoop),
      InstanceMethod("unref", &NlSocket::UnrefLoop),
      InstanceMethod("port", &NlSocket::Port),
      InstanceMethod("setBuffers", &NlSocket::SetBuffers),
      InstanceMethod("buffers", &NlSocket::Buffers),
      InstanceMethod("addMembership", &NlSocket::AddMembership),
    });
  }

  // new NlSocket(fd, onMessage(buf), onError(err)): adopts a netlink socket fd
  // (made in its namespace by socketIn), binds it, and starts polling it.
  NlSocket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NlSocket>(info) {
    Napi::Env env = info.Env();
    if (!WantNumber(info, 0)) return;
    if (info.Length() < 3 || !info[1].IsFunction() || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "NlSocket(fd, onMessage, onError)").ThrowAsJavaScriptException();
      return;
    }
    fd_ = info[0].As<Napi::Number>().Int32Value();
    onMessage_ = Napi::Persistent(info[1].As<Napi::Function>());
    onError_ = Napi::Persistent(info[2].As<Napi::Function>());
    ctx_ = new Napi::AsyncContext(env, "tsnet:netlink");
    int fl = fcntl(fd_, F_GETFL);
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    socklen_t len = sizeof sa;
    int one = 1;
    const char* failed = nullptr;
    if (fl < 0 || fcntl(fd_, F_SETFL, fl | O_NONBLOCK) != 0) failed = "fcntl(O_NONBLOCK)";
    else if (bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) failed = "bind";
    else if (getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0) failed = "getsockname";
    if (failed) {
      int err = errno;
      close(fd_);
      fd_ = -1;
      ErrnoError(env, err, failed).ThrowAsJavaScriptException();
      return;
    }
    port_ = sa.nl_pid;
    // Best effort: older kernels lack them, and an error without the text is still an error.
    setsockopt(fd_, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
    setsockopt(fd_, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    box_ = new PollBox;
    box_->owner = this;
    uv_poll_init(loop, &box_->poll, fd_);
    box_->poll.data = box_;
    // A Worker's environment (or the process's, at exit) is torn down with the socket still open:
    // the poll must be closed, and its close callback run, before the loop goes.
    napi_add_async_cleanup_hook(env, Teardown, box_, &box_->hook);
    uv_poll_start(&box_->poll, UV_READABLE, OnReadable);
    Ref();  // an open socket is not collected (its poll calls back into it); close() lets it go
  }

  ~NlSocket() override {
    Shut(false);
    delete ctx_;
  }

 private:
  // The poll handle, with what teardown needs: it outlives the socket until its close callback runs.
  struct PollBox {
    uv_poll_t poll;
    NlSocket* owner = nullptr;  // null once the socket let go of it
    napi_async_cleanup_hook_handle hook = nullptr;
  };

  int fd_ = -1;
  // The datagrams Pump read and has not delivered yet (valid while Pump runs), and the next to deliver.
  std::vector<napi_value>* batch_ = nullptr;
  size_t next_ = 0;
  uint8_t scratch_[64 * 1024];
  uint32_t port_ = 0;
  PollBox* box_ = nullptr;
  Napi::FunctionReference onMessage_;
  Napi::FunctionReference onError_;
  Napi::AsyncContext* ctx_ = nullptr;

  void Shut(bool release = true) {
    if (box_) {
      uv_poll_stop(&box_->poll);
      box_->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&box_->poll), Closed);
      box_ = nullptr;
      if (release) Unref();
    }
    if (fd_ >= 0) {
      close(fd_);
      fd_ = -1;
    }
  }

  static void Closed(uv_handle_t* h) {
    PollBox* box = reinterpret_cast<PollBox*>(h);
    if (box->hook) napi_remove_async_cleanup_hook(box->hook);
    delete box;
  }

  // The environment is going away: close the socket now (the object itself is finalized later, or never).
  static void Teardown(napi_async_cleanup_hook_handle, void* arg) {
    PollBox* box = static_cast<PollBox*>(arg);
    if (box->owner) box->owner->Shut(false);
  }

  // The environment cannot run JavaScript any more (a Worker terminating, the process exiting): stop reading.
  void Quiesce() {
    if (box_) uv_poll_stop(&box_->poll);
  }

  bool Open(Napi::Env env) {
    if (fd_ >= 0) return true;
    ErrnoError(env, EBADF, "netlink socket").ThrowAsJavaScriptException();
    return false;
  }

  // Calls fn(arg) from the loop, with the C API only: a call into an environment that is stopping
  // fails, and node-addon-api's wrappers would make that failure fatal. An exception the callback
  // throws becomes an uncaught exception, as in any Node callback. False: deliver nothing more.
  bool Call(Napi::FunctionReference& fn, napi_value arg) {
    if (fd_ < 0) return false;
    napi_env env = Env();
    napi_value recv, f, result;
    if (napi_get_reference_value(env, static_cast<napi_ref>(*this), &recv) != napi_ok ||
        napi_get_reference_value(env, static_cast<napi_ref>(fn), &f) != napi_ok || f == nullptr) {
      Quiesce();
      return false;
    }
    if (napi_make_callback(env, static_cast<napi_async_context>(*ctx_), recv, f, 1, &arg, &result) == napi_ok) return fd_ >= 0;
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value e;
      if (napi_get_and_clear_last_exception(env, &e) == napi_ok) napi_fatal_exception(env, e);
      return fd_ >= 0;
    }
    Quiesce();
    return false;
  }

  // An errno Error built with the C API (see Call); nullptr when the environment cannot make one.
  napi_value RawError(int err, const char* syscall) {
    napi_env env = Env();
    std::string msg = std::string(syscall) + ": " + ErrName(err) + " (" + strerror(err) + ")";
    napi_value text, code, e, num, sys;
    if (napi_create_string_utf8(env, msg.c_str(), msg.size(), &text) != napi_ok ||
        napi_create_string_utf8(env, ErrName(err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
        napi_create_error(env, nullptr, text, &e) != napi_ok || napi_create_int32(env, err, &num) != napi_ok ||
        napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys) != napi_ok ||
        napi_set_named_property(env, e, "errno", num) != napi_ok ||
        napi_set_named_property(env, e, "code", code) != napi_ok ||
        napi_set_named_property(env, e, "syscall", sys) != napi_ok)
      return nullptr;
    return e;
  }

  // Reads one datagram into `out`: its length, or -1 with errno set. It is peeked into a large
  // scratch buffer first: the kernel sizes a dump's pieces by the largest buffer a reader has offered
  // (netlink's max_recvmsg_len, up to 32 KiB), so reading with exact sizes would keep dumps in ~4 KiB
  // pieces, eight times the system calls. A datagram larger than the scratch buffer gets its own.
  ssize_t ReadOne(Napi::Env env, int flags, Napi::Buffer<uint8_t>& out) {
    ssize_t n = recv(fd_, scratch_, sizeof scratch_, flags | MSG_PEEK | MSG_TRUNC);
    if (n < 0) return -1;
    if (static_cast<size_t>(n) <= sizeof scratch_) {
      ssize_t m = recv(fd_, scratch_, sizeof scratch_, flags);
      if (m < 0) return -1;
      out = Napi::Buffer<uint8_t>::Copy(env, scratch_, m);
      return m;
    }
    out = Napi::Buffer<uint8_t>::New(env, n);
    return recv(fd_, out.Data(), out.Length(), flags);
  }

  static void OnReadable(uv_poll_t* h, int status, int) {
    PollBox* box = static_cast<PollBox*>(h->data);
    if (box->owner) box->owner->Pump(status);
  }

  void Pump(int status) {
    napi_env env = Env();
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return Quiesce();
    if (status < 0) {
      // libuv reports POLLERR as EBADF and stops the handle. On a netlink socket POLLERR is a pending
      // socket error, most often ENOBUFS (the receive buffer overflowed and messages were lost): take
      // it (SO_ERROR clears it), report it, and poll again. Only a socket that is really gone stays off.
      int err = 0;
      socklen_t l = sizeof err;
      if (status == UV_EBADF && fd_ >= 0 && box_ && getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &l) == 0) {
        uv_poll_start(&box_->poll, UV_READABLE, OnReadable);
        if (err != 0) {
          napi_value e = RawError(err, "recv");
          if (e) Call(onError_, e);
        }
        napi_close_handle_scope(env, scope);
        return;
      }
      napi_value e = RawError(-status, "poll");
      if (e) Call(onError_, e);
      napi_close_handle_scope(env, scope);
      return;
    }
    // First read what is queued now (a dump's next chunk is produced by the kernel as we read), then
    // deliver it. Delivering can make the caller send its next request, which the kernel answers at
    // once; reading those answers in the same callback would let a busy caller starve everything else
    // (timers, the threadpool's completions), so they wait for the loop's next turn.
    std::vector<napi_value> got;
    bool overrun = false;
    int failed = 0;
    while (fd_ >= 0 && got.size() < 1024) {
      napi_value buf;
      ssize_t n = ReadRaw(0, &buf);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        // ENOBUFS: the receive buffer overflowed and replies were lost; the caller must know.
        if (errno == ENOBUFS) {
          overrun = true;
          continue;
        }
        failed = errno;
        break;
      }
      if (n == 0) continue;
      if (buf == nullptr) {  // the environment cannot make a Buffer any more
        Quiesce();
        break;
      }
      got.push_back(buf);
    }
    // Delivered one at a time: a callback may close the socket (its drain() then takes what is left of `got`).
    bool on = true;
    batch_ = &got;
    for (next_ = 0; on && next_ < got.size();) on = Call(onMessage_, got[next_++]);
    batch_ = nullptr;
    if (on && overrun) {
      napi_value e = RawError(ENOBUFS, "recv");
      on = e && Call(onError_, e);
    }
    if (on && failed) {
      napi_value e = RawError(failed, "recv");
      if (e) Call(onError_, e);
    }
    napi_close_handle_scope(env, scope);
  }

  // ReadOne for the loop's callback, with the C API (see Call): the length (buf nullptr when no
  // Buffer could be made), or -1 with errno set.
  ssize_t ReadRaw(int flags, napi_value* buf) {
    *buf = nullptr;
    ssize_t n = recv(fd_, scratch_, sizeof scratch_, flags | MSG_PEEK | MSG_TRUNC);
    if (n < 0) return -1;
    if (static_cast<size_t>(n) <= sizeof scratch_) {
      ssize_t m = recv(fd_, scratch_, sizeof scratch_, flags);
      if (m > 0 && napi_create_buffer_copy(Env(), m, scratch_, nullptr, buf) != napi_ok) *buf = nullptr;
      return m;
    }
    void* data = nullptr;
    if (napi_create_buffer(Env(), n, &data, buf) != napi_ok) {
      *buf = nullptr;
      return recv(fd_, scratch_, sizeof scratch_, flags);  // dropped: nobody can receive it any more
    }
    return recv(fd_, data, n, flags);
  }

  // One datagram to the kernel, gathered from a JS array of buffers; false with a pending exception on failure.
  bool SendParts(Napi::Env env, Napi::Value arg) {
    if (!Open(env)) return false;
    if (!arg.IsArray()) {
      Napi::TypeError::New(env, "expected an array of buffers").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Array parts = arg.As<Napi::Array>();
    std::vector<iovec> iov(parts.Length());
    size_t total = 0;
    for (uint32_t i = 0; i < parts.Length(); i++) {
      Napi::Value v = parts[i];
      if (!v.IsTypedArray()) {
        Napi::TypeError::New(env, "every part must be a Buffer").ThrowAsJavaScriptException();
        return false;
      }
      Napi::Uint8Array a = v.As<Napi::Uint8Array>();
      iov[i].iov_base = a.Data();
      iov[i].iov_len = a.ByteLength();
      total += a.ByteLength();
    }
    // The kernel refuses a datagram larger than the send buffer (less 32 bytes of bookkeeping): grow it.
    int snd = 0;
    socklen_t l = sizeof snd;
    if (getsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &snd, &l) == 0 && total + 64 > static_cast<size_t>(snd)) {
      int want = static_cast<int>(total + 64);
      if (setsockopt(fd_, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) != 0) setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
    }
    sockaddr_nl to{};
    to.nl_family = AF_NETLINK;
    msghdr msg{};
    msg.msg_name = &to;
    msg.msg_namelen = sizeof to;
    msg.msg_iov = iov.data();
    msg.msg_iovlen = iov.size();
    ssize_t n;
    do n = sendmsg(fd_, &msg, 0); while (n < 0 && errno == EINTR);
    if (n < 0) {
      ErrnoError(env, errno, "sendmsg").ThrowAsJavaScriptException();
      return false;
    }
    return true;
  }

  // send(buffers[]): one datagram to the kernel.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    SendParts(env, info.Length() > 0 ? info[0] : env.Undefined());
    return env.Undefined();
  }

  // transact(buffers[]) -> { replies: Buffer[], overrun: boolean }: sends one datagram and returns
  // every reply already queued. The kernel processes a netlink request (an nf_tables batch above all)
  // inside sendmsg, so when it returns, everything it had to say is in our receive queue (nft reads
  // its replies the same way). overrun: some were lost to a full receive buffer.
  Napi::Value Transact(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!SendParts(env, info.Length() > 0 ? info[0] : env.Undefined())) return env.Undefined();
    return ReadQueued(env);
  }

  // sendAsync(buffers[]) -> Promise<void>: one datagram, sent from the libuv threadpool. The kernel
  // applies an nf_tables batch inside sendmsg (a big one takes a few hundred ms, holding its commit
  // mutex), and the loop stays free meanwhile. The bytes are copied and the fd duplicated: a close()
  // while the send is under way cannot send them to whatever reuses the number. Replies arrive on the
  // socket as usual (the poll delivers them, drain() takes what is left).
  Napi::Value SendAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsArray()) {
      Napi::TypeError::New(env, "expected an array of buffers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    struct Work {
      int fd = -1;
      int err = 0;
      std::vector<uint8_t> bytes;
      napi_deferred deferred = nullptr;
      napi_async_work work = nullptr;
    };
    Work* w = new Work;
    Napi::Array parts = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < parts.Length(); i++) {
      Napi::Value v = parts[i];
      if (!v.IsTypedArray()) {
        delete w;
        Napi::TypeError::New(env, "every part must be a Buffer").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      Napi::Uint8Array a = v.As<Napi::Uint8Array>();
      size_t at = w->bytes.size();
      w->bytes.resize(at + a.ByteLength());
      if (a.ByteLength()) memcpy(w->bytes.data() + at, a.Data(), a.ByteLength());
    }
    w->fd = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
    if (w->fd < 0) {
      int err = errno;
      delete w;
      ErrnoError(env, err, "dup").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    napi_value promise, name;
    napi_create_promise(env, &w->deferred, &promise);
    napi_create_string_utf8(env, "tsnet:netlink-send", NAPI_AUTO_LENGTH, &name);
    auto run = [](napi_env, void* d) {
      Work* x = static_cast<Work*>(d);
      int snd = 0;
      socklen_t l = sizeof snd;
      int want = static_cast<int>(x->bytes.size() + 64);
      if (getsockopt(x->fd, SOL_SOCKET, SO_SNDBUF, &snd, &l) == 0 && want > snd &&
          setsockopt(x->fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) != 0)
        setsockopt(x->fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
      sockaddr_nl to{};
      to.nl_family = AF_NETLINK;
      ssize_t n;
      do n = sendto(x->fd, x->bytes.data(), x->bytes.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
      while (n < 0 && errno == EINTR);
      x->err = n < 0 ? errno : 0;
      close(x->fd);
    };
    auto done = [](napi_env e, napi_status status, void* d) {
      Work* x = static_cast<Work*>(d);
      napi_value v = nullptr;
      if (status == napi_ok && x->err == 0) {
        napi_get_undefined(e, &v);
        napi_resolve_deferred(e, x->deferred, v);
      } else {
        int err = x->err ? x->err : ECANCELED;
        std::string msg = std::string("sendmsg: ") + ErrName(err) + " (" + strerror(err) + ")";
        napi_value text, code, num;
        if (napi_create_string_utf8(e, msg.c_str(), msg.size(), &text) == napi_ok &&
            napi_create_error(e, nullptr, text, &v) == napi_ok) {
          if (napi_create_string_utf8(e, ErrName(err), NAPI_AUTO_LENGTH, &code) == napi_ok)
            napi_set_named_property(e, v, "code", code);
          if (napi_create_int32(e, err, &num) == napi_ok) napi_set_named_property(e, v, "errno", num);
          napi_reject_deferred(e, x->deferred, v);
        }
      }
      napi_delete_async_work(e, x->work);
      delete x;
    };
    if (napi_create_async_work(env, nullptr, name, run, done, w, &w->work) != napi_ok ||
        napi_queue_async_work(env, w->work) != napi_ok) {
      if (w->work) napi_delete_async_work(env, w->work);
      close(w->fd);
      napi_value e = RawError(EAGAIN, "sendmsg");
      if (e) napi_reject_deferred(env, w->deferred, e);
      delete w;
    }
    return Napi::Value(env, promise);
  }

  // Every datagram already queued, without waiting: { replies: Buffer[], overrun: boolean }.
  Napi::Value ReadQueued(Napi::Env env) {
    Napi::Array replies = Napi::Array::New(env);
    bool overrun = false;
    uint32_t count = 0;
    for (;;) {
      Napi::Buffer<uint8_t> buf;
      ssize_t n = ReadOne(env, MSG_DONTWAIT, buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == ENOBUFS) {
          overrun = true;
          continue;
        }
        if (errno == EAGAIN) break;
        ErrnoError(env, errno, "recv").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      if (n > 0) replies.Set(count++, buf);
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("replies", replies);
    o.Set("overrun", Napi::Boolean::New(env, overrun));
    return o;
  }

  // drain() -> { replies, overrun }: what the kernel already answered, read before a close (a request
  // it applied must be reported applied, not cancelled).
  Napi::Value Drain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    // First what Pump read but has not delivered (a callback of its batch is closing the socket), then the queue.
    std::vector<napi_value> held;
    if (batch_) {
      held.assign(batch_->begin() + static_cast<std::ptrdiff_t>(next_), batch_->end());
      next_ = batch_->size();
    }
    Napi::Value queued = ReadQueued(env);
    if (queued.IsUndefined() || held.empty()) return queued;
    Napi::Object o = queued.As<Napi::Object>();
    Napi::Array rest = o.Get("replies").As<Napi::Array>();
    Napi::Array all = Napi::Array::New(env);
    uint32_t n = 0;
    for (napi_value v : held) all.Set(n++, Napi::Value(env, v));
    for (uint32_t i = 0; i < rest.Length(); i++) all.Set(n++, rest.Get(i));
    o.Set("replies", all);
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shut();
    return info.Env().Undefined();
  }
  Napi::Value RefLoop(const Napi::CallbackInfo& info) {
    if (box_) uv_ref(reinterpret_cast<uv_handle_t*>(&box_->poll));
    return info.Env().Undefined();
  }
  Napi::Value UnrefLoop(const Napi::CallbackInfo& info) {
    if (box_) uv_unref(reinterpret_cast<uv_handle_t*>(&box_->poll));
    return info.Env().Undefined();
  }
  Napi::Value Port(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), port_); }

  // setBuffers(rcv, snd): SO_RCVBUFFORCE/SO_SNDBUFFORCE (root), else the capped SO_RCVBUF/SO_SNDBUF.
  Napi::Value SetBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env) || !WantNumber(info, 0) || !WantNumber(info, 1)) return env.Undefined();
    int rcv = info[0].As<Napi::Number>().Int32Value();
    int snd = info[1].As<Napi::Number>().Int32Value();
    if (rcv > 0 && setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) != 0 &&
        setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv) != 0) {
      ErrnoError(env, errno, "setsockopt(SO_RCVBUF)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (snd > 0 && setsockopt(fd_, SOL_SOCKET, SO_SNDBUFFORCE, &snd, sizeof snd) != 0 &&
        setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd) != 0) {
      ErrnoError(env, errno, "setsockopt(SO_SNDBUF)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return env.Undefined();
  }

  // buffers() -> {rcv, snd}: what the kernel granted (it doubles the request for bookkeeping).
  Napi::Value Buffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    int rcv = 0, snd = 0;
    socklen_t l = sizeof rcv;
    getsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcv, &l);
    l = sizeof snd;
    getsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &snd, &l);
    Napi::Object o = Napi::Object::New(env);
    o.Set("rcv", rcv);
    o.Set("snd", snd);
    return o;
  }

  Napi::Value AddMembership(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env) || !WantNumber(info, 0)) return env.Undefined();
    int group = info[0].As<Napi::Number>().Int32Value();
    if (setsockopt(fd_, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) != 0)
      ErrnoError(env, errno, "setsockopt(NETLINK_ADD_MEMBERSHIP)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
};

// ---------------------------------------------------------------------------
// Mounts, locks, credentials, pipes.

// pipe() -> [readFd, writeFd], both close-on-exec (a child gets one only where it is passed explicitly).
Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    ErrnoError(env, errno, "pipe2").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, fds[0]);
  a.Set(1u, fds[1]);
  return a;
}

// mount(source, target, fstype, flags, data?)
Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantString(info, 0) || !WantString(info, 1) || !WantString(info, 2) || !WantNumber(info, 3))
    return env.Undefined();
  std::string source = info[0].As<Napi::String>().Utf8Value();
  std::string target = info[1].As<Napi::String>().Utf8Value();
  std::string fstype = info[2].As<Napi::String>().Utf8Value();
  unsigned long flags = static_cast<unsigned long>(info[3].As<Napi::Number>().Int64Value());
  std::string data = info.Length() > 4 && info[4].IsString() ? info[4].As<Napi::String>().Utf8Value() : "";
  if (mount(source.c_str(), target.c_str(), fstype.c_str(), flags, data.empty() ? nullptr : data.c_str()) != 0)
    ErrnoError(env, errno, "mount", target).ThrowAsJavaScriptException();
  return env.Undefined();
}

// umount2(target, flags)
Napi::Value Umount2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantString(info, 0) || !WantNumber(info, 1)) return env.Undefined();
  std::string target = info[0].As<Napi::String>().Utf8Value();
  if (umount2(target.c_str(), info[1].As<Napi::Number>().Int32Value()) != 0)
    ErrnoError(env, errno, "umount2", target).ThrowAsJavaScriptException();
  return env.Undefined();
}

// tryLock(fd, exclusive): flock(fd, LOCK_EX|LOCK_NB) (or LOCK_SH). Returns false when someone
// else holds it. The kernel drops the lock when the holder dies, so a crash never leaves it stale.
Napi::Value TryLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0)) return env.Undefined();
  int op = (info.Length() > 1 && info[1].ToBoolean().Value() == false) ? LOCK_SH : LOCK_EX;
  if (flock(info[0].As<Napi::Number>().Int32Value(), op | LOCK_NB) == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  ErrnoError(env, errno, "flock").ThrowAsJavaScriptException();
  return env.Undefined();
}

// peerCred(fd): SO_PEERCRED of a connected unix socket, {pid, uid, gid} of the process that connected.
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0)) return env.Undefined();
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(info[0].As<Napi::Number>().Int32Value(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ErrnoError(env, errno, "getsockopt(SO_PEERCRED)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cred.pid));
  o.Set("uid", Napi::Number::New(env, cred.uid));
  o.Set("gid", Napi::Number::New(env, cred.gid));
  return o;
}

// closeAsync(fd): close(2) on the libuv threadpool, not waited for. Closing an AF_PACKET socket waits
// for an RCU grace period in the kernel (packet_release -> synchronize_net: ~10 ms), which a caller
// that only sent a frame need not sit through.
Napi::Value CloseAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0)) return env.Undefined();
  struct Work {
    int fd;
    napi_async_work work = nullptr;
  };
  Work* w = new Work{info[0].As<Napi::Number>().Int32Value()};
  napi_value name;
  napi_create_string_utf8(env, "tsnet:close", NAPI_AUTO_LENGTH, &name);
  napi_status st = napi_create_async_work(
      env, nullptr, name, [](napi_env, void* d) { close(static_cast<Work*>(d)->fd); },
      [](napi_env e, napi_status, void* d) {
        Work* x = static_cast<Work*>(d);
        napi_delete_async_work(e, x->work);
        delete x;
      },
      w, &w->work);
  if (st != napi_ok || napi_queue_async_work(env, w->work) != napi_ok) {
    if (w->work) napi_delete_async_work(env, w->work);
    close(w->fd);  // could not queue it: close here
    delete w;
  }
  return env.Undefined();
}

// packetSend(fd, ifindex, ethertype, dstMac, payload): sendto(2) on an AF_PACKET SOCK_DGRAM socket
// (made inside its namespace by socketIn); the kernel adds the Ethernet header, from the device's MAC
// to dstMac. For the announcements a moved address needs (gratuitous ARP, unsolicited NA).
Napi::Value PacketSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0) || !WantNumber(info, 1) || !WantNumber(info, 2)) return env.Undefined();
  if (info.Length() < 5 || !info[3].IsBuffer() || !info[4].IsBuffer() || info[3].As<Napi::Buffer<uint8_t>>().Length() != 6) {
    Napi::TypeError::New(env, "packetSend(fd, ifindex, ethertype, dstMac: 6-byte Buffer, payload: Buffer)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_protocol = htons(static_cast<uint16_t>(info[2].As<Napi::Number>().Uint32Value()));
  to.sll_ifindex = info[1].As<Napi::Number>().Int32Value();
  to.sll_halen = 6;
  memcpy(to.sll_addr, info[3].As<Napi::Buffer<uint8_t>>().Data(), 6);
  Napi::Buffer<uint8_t> payload = info[4].As<Napi::Buffer<uint8_t>>();
  ssize_t n;
  do n = sendto(info[0].As<Napi::Number>().Int32Value(), payload.Data(), payload.Length(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
  while (n < 0 && errno == EINTR);
  if (n < 0) ErrnoError(env, errno, "sendto").ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value GetTid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

// Node unloads an addon a Worker loaded when that Worker ends; the helper thread (and a socket's
// close callback) run this library's code for the life of the process, so it is never unloaded.
void PinLibrary() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&PinLibrary), &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  PinLibrary();
  exports.Set("socketIn", Napi::Function::New(env, SocketIn));
  exports.Set("openIn", Napi::Function::New(env, OpenIn));
  exports.Set("createNetns", Napi::Function::New(env, CreateNetns));
  exports.Set("nsCookie", Napi::Function::New(env, NsCookie));
  exports.Set("dupChecked", Napi::Function::New(env, DupChecked));
  exports.Set("close", Napi::Function::New(env, CloseFd));
  exports.Set("helperTid", Napi::Function::New(env, HelperTid));
  exports.Set("nsType", Napi::Function::New(env, NsType));
  exports.Set("NlSocket", NlSocket::Define(env));
  exports.Set("pipe", Napi::Function::New(env, Pipe));
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("umount2", Napi::Function::New(env, Umount2));
  exports.Set("gettid", Napi::Function::New(env, GetTid));
  exports.Set("packetSend", Napi::Function::New(env, PacketSend));
  exports.Set("closeAsync", Napi::Function::New(env, CloseAsync));
  exports.Set("tryLock", Napi::Function::New(env, TryLock));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));

  Napi::Object c = Napi::Object::New(env);
  c.Set("CLONE_NEWNET", Napi::Number::New(env, CLONE_NEWNET));
  c.Set("MS_BIND", Napi::Number::New(env, MS_BIND));
  c.Set("MS_REC", Napi::Number::New(env, MS_REC));
  c.Set("MS_SHARED", Napi::Number::New(env, MS_SHARED));
  c.Set("MNT_DETACH", Napi::Number::New(env, MNT_DETACH));
  c.Set("AF_NETLINK", Napi::Number::New(env, AF_NETLINK));
  c.Set("SOCK_RAW", Napi::Number::New(env, SOCK_RAW));
  c.Set("AF_PACKET", Napi::Number::New(env, AF_PACKET));
  c.Set("SOCK_DGRAM", Napi::Number::New(env, SOCK_DGRAM));
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(tsnet_native, Init)
