// tsnet_testing: what the safety tests need from inside the process and Node cannot do, never used by
// tsnet itself. A racing thread that keeps swapping what one fd number refers to (dup2, atomic),
// as another thread of a user's process could, between tsnet's checks and its uses of a handle's fd.
#include <napi.h>

#include <pthread.h>
#include <unistd.h>

#include <atomic>

namespace {

struct Swapper {
  Swapper(int t, int x, int y) : target(t), a(x), b(y) {}
  int target, a, b;
  std::atomic<bool> stop{false};
  std::atomic<unsigned long> swaps{0};
  pthread_t thread{};
};
Swapper* running = nullptr;

void* Swap(void* arg) {
  Swapper* s = static_cast<Swapper*>(arg);
  while (!s->stop.load(std::memory_order_relaxed)) {
    dup2(s->b, s->target);
    dup2(s->a, s->target);
    s->swaps.fetch_add(1, std::memory_order_relaxed);
  }
  return nullptr;
}

// startSwapper(target, a, b): a thread that makes `target` a copy of b, then of a, over and over.
Napi::Value StartSwapper(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (running || info.Length() < 3) {
    Napi::Error::New(env, "startSwapper(target, a, b), one at a time").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  running = new Swapper(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(),
                        info[2].As<Napi::Number>().Int32Value());
  pthread_create(&running->thread, nullptr, Swap, running);
  return env.Undefined();
}

// stopSwapper() -> swaps made; `target` is left a copy of a.
Napi::Value StopSwapper(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!running) return Napi::Number::New(env, 0);
  running->stop = true;
  pthread_join(running->thread, nullptr);
  double n = static_cast<double>(running->swaps.load());
  delete running;
  running = nullptr;
  return Napi::Number::New(env, n);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("startSwapper", Napi::Function::New(env, StartSwapper));
  exports.Set("stopSwapper", Napi::Function::New(env, StopSwapper));
  return exports;
}

}  // namespace

NODE_API_MODULE(tsnet_testing, Init)
