// NVML, the NVIDIA Management Library, read from the addon without linking it: NvmlSession(path)
// starts one thread that dlopens the library and makes every NVML call; open(), read() and close()
// queue a job for that thread and return a Promise that a thread-safe function settles on the main
// thread.
//
// Why a thread of its own, rather than an AsyncWorker on libuv's pool or a worker_thread: an NVML
// call can hang inside the driver (a GPU that fell off the bus, a wedged kernel module) and nothing
// can interrupt it. On libuv's pool each hung call would hold one of its (by default 4) threads for
// good, and a few of them would stall every fs call and zstd job of the process; a worker_thread
// can only be terminated between JS statements, and node waits for it at exit. A detached thread
// that nobody joins costs one stack: the caller (src/polite/gpu-nvml.ts) stops waiting at its
// timeout, queues close() behind the hung call and never uses the session again. The thread-safe
// function is unref'd, so a session never keeps the process alive: the caller's timer does while a
// call is outstanding.
#include "nvml.h"

#if defined(__linux__)
#include <dlfcn.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace tender {
namespace {

// The part of nvml.h used here; these entry points and types are ABI-stable since driver 319.
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
constexpr unsigned kUuidBufferSize = 96;  // NVML_DEVICE_UUID_V2_BUFFER_SIZE
// A node with more GPUs than this is not a machine but a garbage answer; it also bounds the loop.
constexpr unsigned kMaxGpus = 256;

struct NvmlApi {
  void* library = nullptr;
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  nvmlReturn_t (*deviceCount)(unsigned int*) = nullptr;
  nvmlReturn_t (*deviceByIndex)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*deviceUuid)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*utilisation)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  const char* (*errorString)(nvmlReturn_t) = nullptr;
};

struct ReturnCode {
  int value;
  const char* name;
  const char* meaning;
};

// nvmlReturn_t values (nvml.h) and what they mean for someone reading utilisation.
constexpr ReturnCode kReturnCodes[] = {
    {1, "NVML_ERROR_UNINITIALIZED", "NVML was not initialised"},
    {2, "NVML_ERROR_INVALID_ARGUMENT", "NVML rejected an argument"},
    {3, "NVML_ERROR_NOT_SUPPORTED", "the GPU does not support this query"},
    {4, "NVML_ERROR_NO_PERMISSION", "permission denied by the driver"},
    {5, "NVML_ERROR_ALREADY_INITIALIZED", "NVML was already initialised"},
    {6, "NVML_ERROR_NOT_FOUND", "no such GPU"},
    {7, "NVML_ERROR_INSUFFICIENT_SIZE", "a buffer was too small"},
    {8, "NVML_ERROR_INSUFFICIENT_POWER", "a GPU's external power cables are not connected"},
    {9, "NVML_ERROR_DRIVER_NOT_LOADED", "the NVIDIA driver is not loaded"},
    {10, "NVML_ERROR_TIMEOUT", "the driver timed out"},
    {11, "NVML_ERROR_IRQ_ISSUE", "the kernel driver has an interrupt problem"},
    {12, "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML cannot find the driver's libraries"},
    {13, "NVML_ERROR_FUNCTION_NOT_FOUND", "the driver lacks this function (older than the library)"},
    {14, "NVML_ERROR_CORRUPTED_INFOROM", "a GPU's infoROM is corrupted"},
    {15, "NVML_ERROR_GPU_IS_LOST", "a GPU has fallen off the bus or is otherwise inaccessible"},
    {16, "NVML_ERROR_RESET_REQUIRED", "a GPU needs a reset"},
    {17, "NVML_ERROR_OPERATING_SYSTEM", "the operating system blocked the call"},
    {18, "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
     "libnvidia-ml and the loaded kernel driver are different versions (reload the driver or reboot after an upgrade)"},
    {19, "NVML_ERROR_IN_USE", "the GPU is in use"},
    {20, "NVML_ERROR_MEMORY", "the driver is out of memory"},
    {21, "NVML_ERROR_NO_DATA", "the driver has no data yet"},
    {999, "NVML_ERROR_UNKNOWN", "an unknown error inside NVML"},
};

struct Gpu {
  unsigned index;
  std::string uuid;
  unsigned utilisation;
};

enum class JobKind { Open, Read, Close };

struct Job {
  JobKind kind;
  napi_deferred deferred;  // nullptr: nobody waits (a session collected without close())
  // Set on the NVML thread; an empty error is success.
  std::string error;
  std::string errorCode;
  std::vector<Gpu> gpus;
};

// Shared by the JS object and the NVML thread; whichever goes last frees it.
struct Session {
  std::string libraryPath;
  NvmlApi api;
  bool initialised = false;
  napi_threadsafe_function deliver = nullptr;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Job*> queue;
  // Set (under mutex) when node destroys `deliver`: after its last release, or when the environment
  // is torn down with the thread still alive (at exit, or hung). The thread then must not touch it.
  bool deliverGone = false;
};

// NVML's own text for a return code, as printable ASCII: a broken library may return anything.
std::string nvmlText(const NvmlApi& api, nvmlReturn_t rc) {
  const char* text = api.errorString ? api.errorString(rc) : nullptr;
  if (text == nullptr) return "";
  std::string out;
  for (size_t i = 0; text[i] != '\0' && i < 200; i++) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  return out;
}

void failCall(const Session& s, Job& job, const std::string& call, nvmlReturn_t rc) {
  const ReturnCode* known = nullptr;
  for (const ReturnCode& r : kReturnCodes) {
    if (r.value == rc) known = &r;
  }
  job.errorCode = known ? known->name : "NVML_ERROR_" + std::to_string(rc);
  job.error = call + " failed: " + (known ? known->meaning : "NVML error " + std::to_string(rc)) + " (" + job.errorCode;
  const std::string text = nvmlText(s.api, rc);
  if (!text.empty()) job.error += "; NVML says \"" + text + "\"";
  job.error += ")";
}

void fail(Job& job, const char* code, std::string message) {
  job.errorCode = code;
  job.error = std::move(message);
}

template <typename Fn>
bool resolveSymbol(Session& s, Job& job, Fn* slot, const char* name) {
  *slot = reinterpret_cast<Fn>(dlsym(s.api.library, name));
  if (*slot == nullptr) {
    fail(job, "NVML_SYMBOL_MISSING", s.libraryPath + " has no " + name + " (not NVML, or a driver too old for it)");
  }
  return *slot != nullptr;
}

void unload(Session& s) {
  dlclose(s.api.library);
  s.api = NvmlApi{};
}

void openLibrary(Session& s, Job& job) {
  if (s.api.library != nullptr) return fail(job, "NVML_STATE", "NVML is already open in this session");
  dlerror();
  s.api.library = dlopen(s.libraryPath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (s.api.library == nullptr) {
    const char* why = dlerror();
    return fail(job, "NVML_LIBRARY_MISSING", "cannot load " + s.libraryPath + ": " + (why ? why : "dlopen failed"));
  }
  NvmlApi& a = s.api;
  const bool resolved = resolveSymbol(s, job, &a.init, "nvmlInit_v2") && resolveSymbol(s, job, &a.shutdown, "nvmlShutdown") &&
                        resolveSymbol(s, job, &a.deviceCount, "nvmlDeviceGetCount_v2") &&
                        resolveSymbol(s, job, &a.deviceByIndex, "nvmlDeviceGetHandleByIndex_v2") &&
                        resolveSymbol(s, job, &a.deviceUuid, "nvmlDeviceGetUUID") &&
                        resolveSymbol(s, job, &a.utilisation, "nvmlDeviceGetUtilizationRates") &&
                        resolveSymbol(s, job, &a.errorString, "nvmlErrorString");
  if (!resolved) return unload(s);
  if (const nvmlReturn_t rc = a.init()) {
    failCall(s, job, "nvmlInit_v2", rc);
    return unload(s);
  }
  s.initialised = true;
}

void readGpus(Session& s, Job& job) {
  if (!s.initialised) return fail(job, "NVML_STATE", "NVML is not open in this session");
  const NvmlApi& a = s.api;
  unsigned count = 0;
  if (const nvmlReturn_t rc = a.deviceCount(&count)) return failCall(s, job, "nvmlDeviceGetCount_v2", rc);
  if (count > kMaxGpus) {
    return fail(job, "NVML_GARBAGE",
                "nvmlDeviceGetCount_v2 reported " + std::to_string(count) + " GPUs (more than " + std::to_string(kMaxGpus) +
                    "): the library's answer is garbage");
  }
  for (unsigned i = 0; i < count; i++) {
    const std::string gpu = "(GPU " + std::to_string(i) + ")";
    nvmlDevice_t device = nullptr;
    if (const nvmlReturn_t rc = a.deviceByIndex(i, &device)) return failCall(s, job, "nvmlDeviceGetHandleByIndex_v2" + gpu, rc);
    char uuid[kUuidBufferSize] = {};
    if (const nvmlReturn_t rc = a.deviceUuid(device, uuid, kUuidBufferSize)) return failCall(s, job, "nvmlDeviceGetUUID" + gpu, rc);
    if (std::memchr(uuid, '\0', kUuidBufferSize) == nullptr) {
      return fail(job, "NVML_GARBAGE", "nvmlDeviceGetUUID" + gpu + " returned an unterminated string");
    }
    nvmlUtilization_t rates{};
    if (const nvmlReturn_t rc = a.utilisation(device, &rates)) return failCall(s, job, "nvmlDeviceGetUtilizationRates" + gpu, rc);
    job.gpus.push_back({i, uuid, rates.gpu});
  }
}

void closeLibrary(Session& s, Job& job) {
  if (s.api.library == nullptr) return;
  if (s.initialised) {
    s.initialised = false;
    if (const nvmlReturn_t rc = s.api.shutdown()) failCall(s, job, "nvmlShutdown", rc);
  }
  unload(s);
}

// Hands a finished job to the main thread; dropped when nobody is left to take it.
void deliver(Session& s, Job* job) {
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.deliverGone || napi_call_threadsafe_function(s.deliver, job, napi_tsfn_nonblocking) != napi_ok) delete job;
}

void releaseDeliver(Session& s) {
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.deliverGone) napi_release_threadsafe_function(s.deliver, napi_tsfn_release);
}

// Main thread, when node destroys the thread-safe function.
void deliverDestroyed(napi_env, void* data, void*) {
  std::unique_ptr<std::shared_ptr<Session>> session(static_cast<std::shared_ptr<Session>*>(data));
  std::lock_guard<std::mutex> lock((*session)->mutex);
  (*session)->deliverGone = true;
}

// The NVML thread: one job at a time, in order, until close.
void serve(std::shared_ptr<Session> s) {
  for (;;) {
    Job* job;
    {
      std::unique_lock<std::mutex> lock(s->mutex);
      s->wake.wait(lock, [&] { return !s->queue.empty(); });
      job = s->queue.front();
      s->queue.pop_front();
    }
    const JobKind kind = job->kind;
    switch (kind) {
      case JobKind::Open:
        openLibrary(*s, *job);
        break;
      case JobKind::Read:
        readGpus(*s, *job);
        break;
      case JobKind::Close:
        closeLibrary(*s, *job);
        break;
    }
    deliver(*s, job);
    if (kind == JobKind::Close) return releaseDeliver(*s);
  }
}

// Main thread: settles a job's promise (env is null when the environment is going away).
void settle(napi_env env, napi_value, void*, void* data) {
  std::unique_ptr<Job> job(static_cast<Job*>(data));
  if (env == nullptr || job->deferred == nullptr) return;
  Napi::Env e(env);
  Napi::HandleScope scope(e);
  try {
    if (!job->error.empty()) {
      Napi::Error err = Napi::Error::New(e, job->error);
      err.Set("code", Napi::String::New(e, job->errorCode));
      napi_reject_deferred(env, job->deferred, err.Value());
      return;
    }
    Napi::Value result = e.Undefined();
    if (job->kind == JobKind::Read) {
      Napi::Array gpus = Napi::Array::New(e, job->gpus.size());
      for (size_t i = 0; i < job->gpus.size(); i++) {
        Napi::Object gpu = Napi::Object::New(e);
        gpu.Set("index", Napi::Number::New(e, job->gpus[i].index));
        gpu.Set("uuid", Napi::String::New(e, job->gpus[i].uuid));
        gpu.Set("utilisation", Napi::Number::New(e, job->gpus[i].utilisation));
        gpus.Set(static_cast<uint32_t>(i), gpu);
      }
      result = gpus;
    }
    napi_resolve_deferred(env, job->deferred, result);
  } catch (const Napi::Error& err) {
    napi_reject_deferred(env, job->deferred, err.Value());
  }
}

class NvmlSession : public Napi::ObjectWrap<NvmlSession> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NvmlSession",
                       {
                           InstanceMethod<&NvmlSession::Open>("open"),
                           InstanceMethod<&NvmlSession::Read>("read"),
                           InstanceMethod<&NvmlSession::Close>("close"),
                       });
  }

  // new NvmlSession(libraryPath: string): starts the session's thread; loads nothing yet.
  explicit NvmlSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NvmlSession>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "NvmlSession(libraryPath: string)");
    session_->libraryPath = info[0].As<Napi::String>().Utf8Value();
    napi_value name = Napi::String::New(env, "tender:nvml");
    auto* keep = new std::shared_ptr<Session>(session_);
    if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, keep, deliverDestroyed, nullptr, settle,
                                        &session_->deliver) != napi_ok) {
      delete keep;
      throw Napi::Error::New(env, "cannot create the NVML session's thread-safe function");
    }
    napi_unref_threadsafe_function(env, session_->deliver);
    try {
      std::thread(serve, session_).detach();
    } catch (const std::system_error& err) {
      napi_release_threadsafe_function(session_->deliver, napi_tsfn_abort);
      throw Napi::Error::New(env, std::string("cannot start the NVML thread: ") + err.what());
    }
  }

  ~NvmlSession() override {
    if (!closed_) enqueue(JobKind::Close, nullptr);
  }

 private:
  // open(): Promise<void>: dlopen, resolve the functions, nvmlInit_v2
  Napi::Value Open(const Napi::CallbackInfo& info) { return submit(info.Env(), JobKind::Open); }
  // read(): Promise<Array<{index, uuid, utilisation}>>: every GPU NVML counts, in index order
  Napi::Value Read(const Napi::CallbackInfo& info) { return submit(info.Env(), JobKind::Read); }
  // close(): Promise<void>: nvmlShutdown, dlclose; the thread ends. Queued behind any hung call.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Value promise = submit(info.Env(), JobKind::Close);
    closed_ = true;
    return promise;
  }

  Napi::Value submit(Napi::Env env, JobKind kind) {
    napi_deferred deferred;
    napi_value promise;
    if (napi_create_promise(env, &deferred, &promise) != napi_ok) throw Napi::Error::New(env, "cannot create a promise");
    if (closed_) {
      napi_reject_deferred(env, deferred, Napi::Error::New(env, "the NVML session is closed").Value());
    } else {
      enqueue(kind, deferred);
    }
    return Napi::Value(env, promise);
  }

  void enqueue(JobKind kind, napi_deferred deferred) {
    {
      std::lock_guard<std::mutex> lock(session_->mutex);
      session_->queue.push_back(new Job{kind, deferred, {}, {}, {}});
    }
    session_->wake.notify_one();
  }

  std::shared_ptr<Session> session_ = std::make_shared<Session>();
  bool closed_ = false;
};

}  // namespace

void exportNvml(Napi::Env env, Napi::Object exports) { exports.Set("NvmlSession", NvmlSession::Init(env)); }

}  // namespace tender

#else

namespace tender {

void exportNvml(Napi::Env env, Napi::Object exports) {
  exports.Set("nvmlUnavailable", Napi::String::New(env, "NVML is read on Linux only"));
}

}  // namespace tender

#endif
