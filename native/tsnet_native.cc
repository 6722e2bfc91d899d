// tsnet native addon: the few syscalls Node cannot make.
//
// Everything here acts on the *calling thread* (setns, unshare) or on the
// process's mount namespace (mount, umount2). The JS side (src/netns/switch.ts)
// is the only caller of setns/unshare, and it never lets the main thread stay
// switched across an await: see the threading notes there.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>

namespace {

// An Error shaped like Node's ErrnoException: message, errno, code, syscall, path.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path = "") {
  std::string msg = std::string(syscall) + (path.empty() ? "" : " " + path) + ": " +
                    (strerrorname_np(err) ? strerrorname_np(err) : "EUNKNOWN") + " (" + strerror(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, strerrorname_np(err) ? strerrorname_np(err) : "EUNKNOWN"));
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

// setns(fd, nstype): move the calling thread into the namespace behind fd.
Napi::Value SetNs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0) || !WantNumber(info, 1)) return env.Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int nstype = info[1].As<Napi::Number>().Int32Value();
  if (setns(fd, nstype) != 0) ErrnoError(env, errno, "setns").ThrowAsJavaScriptException();
  return env.Undefined();
}

// unshare(flags) for the calling thread.
Napi::Value Unshare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantNumber(info, 0)) return env.Undefined();
  if (unshare(info[0].As<Napi::Number>().Int32Value()) != 0)
    ErrnoError(env, errno, "unshare").ThrowAsJavaScriptException();
  return env.Undefined();
}

// createNetnsAt(path): a new network namespace, kept alive by a bind mount of
// it on `path` (an existing empty file), exactly as `ip netns add` does. The
// calling thread enters the new namespace only for the bind mount and is back
// in its original namespace before this returns, on success and on failure.
Napi::Value CreateNetnsAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!WantString(info, 0)) return env.Undefined();
  std::string path = info[0].As<Napi::String>().Utf8Value();

  int orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (orig < 0) {
    ErrnoError(env, errno, "open", "/proc/thread-self/ns/net").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int err = 0;
  const char* failed = nullptr;
  if (unshare(CLONE_NEWNET) != 0) {
    err = errno;
    failed = "unshare";
  } else if (mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) != 0) {
    err = errno;
    failed = "mount";
  }
  // Back to where we were, whatever happened. If this fails the thread is
  // stranded in the wrong namespace: nothing safe remains but to abort.
  if (setns(orig, CLONE_NEWNET) != 0) {
    fprintf(stderr, "tsnet: cannot return the main thread to its network namespace: %s\n", strerror(errno));
    abort();
  }
  close(orig);
  if (failed) ErrnoError(env, err, failed, path).ThrowAsJavaScriptException();
  return env.Undefined();
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

Napi::Value GetTid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setns", Napi::Function::New(env, SetNs));
  exports.Set("unshare", Napi::Function::New(env, Unshare));
  exports.Set("createNetnsAt", Napi::Function::New(env, CreateNetnsAt));
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("umount2", Napi::Function::New(env, Umount2));
  exports.Set("gettid", Napi::Function::New(env, GetTid));
  exports.Set("tryLock", Napi::Function::New(env, TryLock));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));

  Napi::Object c = Napi::Object::New(env);
  c.Set("CLONE_NEWNET", Napi::Number::New(env, CLONE_NEWNET));
  c.Set("CLONE_NEWNS", Napi::Number::New(env, CLONE_NEWNS));
  c.Set("MS_BIND", Napi::Number::New(env, MS_BIND));
  c.Set("MS_REC", Napi::Number::New(env, MS_REC));
  c.Set("MS_SHARED", Napi::Number::New(env, MS_SHARED));
  c.Set("MS_SLAVE", Napi::Number::New(env, MS_SLAVE));
  c.Set("MS_PRIVATE", Napi::Number::New(env, MS_PRIVATE));
  c.Set("MNT_DETACH", Napi::Number::New(env, MNT_DETACH));
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(tsnet_native, Init)
