// Node-API bindings for tender's hot loops (see gear.h). Loaded by src/backup/chunk/native.ts.
#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "directio.h"
#include "freeze.h"
#include "gear.h"
#include "lease.h"
#include "nvml.h"
#include "pagecache.h"

#if defined(__linux__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define TENDER_HAVE_FSTATAT 1
#endif
#include "seal.h"

namespace {

using tender::CutVariant;
using tender::GearParams;

struct ByteView {
  uint8_t* data;
  size_t length;
};

// Data pointer (already adjusted by byteOffset, see napi_get_typedarray_info) and length of a
// typed array; works for arrays backed by ArrayBuffer or SharedArrayBuffer, and for Buffers.
template <typename T>
T* typedArrayData(const Napi::Env& env, const Napi::Value& v, napi_typedarray_type want,
                  const char* what, size_t* length) {
  bool isTyped = false;
  napi_status st = napi_is_typedarray(env, v, &isTyped);
  if (st != napi_ok || !isTyped) throw Napi::TypeError::New(env, std::string(what) + " must be a typed array");
  napi_typedarray_type type;
  size_t len = 0;
  void* data = nullptr;
  st = napi_get_typedarray_info(env, v, &type, &len, &data, nullptr, nullptr);
  if (st != napi_ok) throw Napi::Error::New(env, std::string("cannot read ") + what);
  if (type != want && !(want == napi_uint8_array && type == napi_uint8_clamped_array)) {
    throw Napi::TypeError::New(
        env, std::string(what) + (want == napi_uint8_array ? " must be a Uint8Array" : " must be a Uint32Array"));
  }
  *length = len;
  return static_cast<T*>(data);
}

ByteView bytes(const Napi::Env& env, const Napi::Value& v, const char* what) {
  ByteView view{nullptr, 0};
  view.data = typedArrayData<uint8_t>(env, v, napi_uint8_array, what, &view.length);
  return view;
}

// A non-negative integer (a safe JS integer) taken from a number argument.
size_t index(const Napi::Env& env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(what) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 9007199254740991.0) || std::floor(d) != d) {
    throw Napi::RangeError::New(env, std::string(what) + " must be a non-negative integer");
  }
  return static_cast<size_t>(d);
}

uint32_t u32(const Napi::Env& env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(what) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= -2147483648.0 && d <= 4294967295.0) || std::floor(d) != d) {
    throw Napi::RangeError::New(env, std::string(what) + " must be a 32-bit integer");
  }
  // Accept both the signed (h | 0 style) and unsigned (>>> 0 style) spelling of a mask.
  return d < 0 ? static_cast<uint32_t>(static_cast<int64_t>(d) + 4294967296LL) : static_cast<uint32_t>(d);
}

class GearChunker : public Napi::ObjectWrap<GearChunker> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "GearChunker",
                       {
                           InstanceMethod<&GearChunker::Cut>("cut"),
                           InstanceMethod<&GearChunker::CutAll>("cutAll"),
                           InstanceAccessor<&GearChunker::Variant>("variant"),
                       });
  }

  // new GearChunker(gear: Uint32Array(256), minSize, avgSize, maxSize, maskHard, maskEasy,
  //                 variant?: 'bytewise' (default) | 'rolling2')
  explicit GearChunker(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GearChunker>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 6) throw Napi::TypeError::New(env, "GearChunker(gear, minSize, avgSize, maxSize, maskHard, maskEasy)");
    size_t gearLen = 0;
    const uint32_t* gear = typedArrayData<uint32_t>(env, info[0], napi_uint32_array, "gear", &gearLen);
    if (gearLen != 256) throw Napi::RangeError::New(env, "gear must have 256 entries");
    std::memcpy(p_.gear, gear, sizeof p_.gear);
    for (int b = 0; b < 256; b++) p_.gearLs[b] = p_.gear[b] << 1;
    p_.minSize = index(env, info[1], "minSize");
    p_.avgSize = index(env, info[2], "avgSize");
    p_.maxSize = index(env, info[3], "maxSize");
    if (!(p_.minSize < p_.avgSize && p_.avgSize < p_.maxSize && p_.maxSize <= 0xffffffffu)) {
      throw Napi::RangeError::New(env, "need minSize < avgSize < maxSize < 2^32");
    }
    p_.maskHard = u32(env, info[4], "maskHard");
    p_.maskEasy = u32(env, info[5], "maskEasy");
    if (info.Length() > 6 && !info[6].IsUndefined()) {
      const std::string v = info[6].ToString().Utf8Value();
      if (v == "bytewise") {
        variant_ = CutVariant::Bytewise;
      } else if (v == "rolling2") {
        variant_ = CutVariant::Rolling2;
      } else {
        throw Napi::RangeError::New(env, "variant must be 'bytewise' or 'rolling2'");
      }
    }
  }

 private:
  // Validates (data, start, end) and returns the data pointer.
  const uint8_t* range(const Napi::CallbackInfo& info, size_t* start, size_t* end) {
    Napi::Env env = info.Env();
    const ByteView data = bytes(env, info[0], "data");
    *start = index(env, info[1], "start");
    *end = index(env, info[2], "end");
    if (!(*start <= *end && *end <= data.length)) {
      throw Napi::RangeError::New(env, "need 0 <= start <= end <= data.length");
    }
    return data.data;
  }

  // cut(data: Uint8Array, start: number, end: number): number
  Napi::Value Cut(const Napi::CallbackInfo& info) {
    size_t start, end;
    const uint8_t* data = range(info, &start, &end);
    return Napi::Number::New(info.Env(), static_cast<double>(tender::cut(p_, variant_, data, start, end)));
  }

  // cutAll(data: Uint8Array, start: number, end: number, eof: boolean, out: Uint32Array): number
  Napi::Value CutAll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t start, end;
    const uint8_t* data = range(info, &start, &end);
    const bool eof = info[3].ToBoolean().Value();
    size_t outLen = 0;
    uint32_t* out = typedArrayData<uint32_t>(env, info[4], napi_uint32_array, "out", &outLen);
    return Napi::Number::New(env, static_cast<double>(tender::cutAll(p_, variant_, data, start, end, eof, out, outLen)));
  }

  Napi::Value Variant(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), variant_ == CutVariant::Bytewise ? "bytewise" : "rolling2");
  }

  GearParams p_{};
  // Bytewise is the default: on the machines measured (AMD EPYC Zen 3) the rolling-two-bytes
  // loop was 10-30% slower (it needs 2.5 loads per byte instead of 2, and the byte-at-a-time loop
  // is not latency-bound); bench/chunk.bench.mjs compares both.
  CutVariant variant_ = CutVariant::Bytewise;
};

bool overlaps(const uint8_t* a, size_t aLen, const uint8_t* b, size_t bLen) {
  if (aLen == 0 || bLen == 0) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + bLen && b0 < a0 + aLen;
}

size_t shuffleElementSize(const Napi::Env& env, const Napi::Value& v) {
  const size_t elementSize = index(env, v, "elementSize");
  if (elementSize < 1 || elementSize > 64) throw Napi::RangeError::New(env, "elementSize must be in 1..64");
  return elementSize;
}

// shuffle(src: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void;
// with base, dst is the shuffle of (src XOR base).
Napi::Value Shuffle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ByteView src = bytes(env, info[0], "src");
  const ByteView dst = bytes(env, info[1], "dst");
  const size_t elementSize = shuffleElementSize(env, info[2]);
  const bool withBase = info.Length() > 3 && !info[3].IsUndefined();
  if (dst.length != src.length) throw Napi::RangeError::New(env, "src and dst must have the same length");
  // Overlapping src and dst would silently corrupt the output.
  if (overlaps(src.data, src.length, dst.data, dst.length)) throw Napi::RangeError::New(env, "src and dst must not overlap");
  if (withBase) {
    const ByteView base = bytes(env, info[3], "base");
    if (base.length != src.length) throw Napi::RangeError::New(env, "base and src must have the same length");
    if (overlaps(base.data, base.length, dst.data, dst.length)) throw Napi::RangeError::New(env, "base and dst must not overlap");
    if (src.length > 0) tender::shuffleXor(src.data, base.data, dst.data, src.length, elementSize);
    return env.Undefined();
  }
  if (src.length > 0) tender::shuffle(src.data, dst.data, src.length, elementSize);
  return env.Undefined();
}

// unshufflePlanes(planes: Uint8Array[], tail: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void
// dst = unshuffle(planes, each dst's element count long, then tail), XOR base when given. base may
// be exactly dst (same bytes); no other overlap with dst is allowed.
Napi::Value UnshufflePlanes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "planes must be an array of Uint8Array");
  const Napi::Array list = info[0].As<Napi::Array>();
  const ByteView tail = bytes(env, info[1], "tail");
  const ByteView dst = bytes(env, info[2], "dst");
  const size_t elementSize = shuffleElementSize(env, info[3]);
  if (list.Length() != elementSize) throw Napi::RangeError::New(env, "one plane per byte of an element is needed");
  const size_t n = dst.length / elementSize;
  if (tail.length != dst.length - n * elementSize) throw Napi::RangeError::New(env, "tail must be dst's length mod elementSize");
  if (overlaps(tail.data, tail.length, dst.data, dst.length)) throw Napi::RangeError::New(env, "tail and dst must not overlap");
  std::vector<const uint8_t*> planes(elementSize);
  for (size_t k = 0; k < elementSize; k++) {
    const ByteView plane = bytes(env, list.Get(static_cast<uint32_t>(k)), "plane");
    if (plane.length != n) throw Napi::RangeError::New(env, "each plane must hold one byte per element");
    if (overlaps(plane.data, plane.length, dst.data, dst.length)) throw Napi::RangeError::New(env, "planes and dst must not overlap");
    planes[k] = plane.data;
  }
  const uint8_t* base = nullptr;
  if (info.Length() > 4 && !info[4].IsUndefined()) {
    const ByteView b = bytes(env, info[4], "base");
    if (b.length != dst.length) throw Napi::RangeError::New(env, "base and dst must have the same length");
    if (b.data != dst.data && overlaps(b.data, b.length, dst.data, dst.length)) throw Napi::RangeError::New(env, "base must be dst or not overlap it");
    base = b.data;
  }
  if (dst.length > 0) tender::unshufflePlanes(planes.data(), tail.data, tail.length, dst.data, base, n, elementSize);
  return env.Undefined();
}

// ---- AES-256-GCM into caller memory (seal.h) ---------------------------------------------------

ByteView aeadKey(const Napi::Env& env, const Napi::Value& v) {
  const ByteView key = bytes(env, v, "key");
  if (key.length != tender::kAeadKeyLength) throw Napi::RangeError::New(env, "key must be 32 bytes");
  return key;
}

// sealInto(key: Uint8Array(32), aad: Uint8Array, src: Uint8Array, dst: Uint8Array): number
//
// Writes nonce[12] ‖ AES-256-GCM(key, nonce, src, aad) ‖ tag[16] (the format of seal() in
// src/crypto/aead.ts, fresh random nonce from RAND_bytes) to dst[0, src.length + 28) and returns
// src.length + 28. dst may be a view with a byteOffset, over an ArrayBuffer or a
// SharedArrayBuffer. RangeError when key is not 32 bytes, when dst is shorter than
// src.length + 28, or when key, aad or src overlaps that part of dst (src and dst must be
// distinct memory: in-place sealing is not supported). Allocates nothing per call.
Napi::Value SealInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) throw Napi::TypeError::New(env, "sealInto(key, aad, src, dst)");
  const ByteView key = aeadKey(env, info[0]);
  const ByteView aad = bytes(env, info[1], "aad");
  const ByteView src = bytes(env, info[2], "src");
  const ByteView dst = bytes(env, info[3], "dst");
  const size_t total = src.length + tender::kAeadOverhead;
  if (dst.length < total) throw Napi::RangeError::New(env, "dst is too small (needs src.length + 28 bytes)");
  if (overlaps(key.data, key.length, dst.data, total) || overlaps(aad.data, aad.length, dst.data, total) ||
      overlaps(src.data, src.length, dst.data, total)) {
    throw Napi::RangeError::New(env, "key, aad and src must not overlap dst");
  }
  switch (tender::sealInto(key.data, aad.data, aad.length, src.data, src.length, dst.data)) {
    case tender::AeadStatus::Ok:
      break;
    case tender::AeadStatus::RandFailed:
      throw Napi::Error::New(env, "RAND_bytes failed");
    default:
      throw Napi::Error::New(env, "AES-256-GCM encryption failed in OpenSSL");
  }
  return Napi::Number::New(env, static_cast<double>(total));
}

// openInto(key: Uint8Array(32), aad: Uint8Array, sealed: Uint8Array, dst: Uint8Array): number
//
// Verifies sealed (nonce ‖ ciphertext ‖ tag) against key and aad and writes the plaintext to
// dst[0, sealed.length - 28); returns sealed.length - 28. Throws an Error whose message is exactly
// "authentication failed" when sealed is shorter than 28 bytes or fails authentication (wrong key
// or AAD, any changed byte); GCM decrypts before the tag can be checked, so by then
// dst[0, sealed.length - 28) has been overwritten: it is zero-filled before the throw (it never
// holds unauthenticated plaintext, but its previous contents are lost). Nothing outside that range
// is written. RangeError when key is not 32 bytes, dst is too short, or key, aad or sealed overlaps
// that part of dst (no in-place opening). Allocates nothing per call.
Napi::Value OpenInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) throw Napi::TypeError::New(env, "openInto(key, aad, sealed, dst)");
  const ByteView key = aeadKey(env, info[0]);
  const ByteView aad = bytes(env, info[1], "aad");
  const ByteView sealed = bytes(env, info[2], "sealed");
  const ByteView dst = bytes(env, info[3], "dst");
  if (sealed.length < tender::kAeadOverhead) throw Napi::Error::New(env, "authentication failed");
  const size_t plainLen = sealed.length - tender::kAeadOverhead;
  if (dst.length < plainLen) throw Napi::RangeError::New(env, "dst is too small (needs sealed.length - 28 bytes)");
  if (overlaps(key.data, key.length, dst.data, plainLen) || overlaps(aad.data, aad.length, dst.data, plainLen) ||
      overlaps(sealed.data, sealed.length, dst.data, plainLen)) {
    throw Napi::RangeError::New(env, "key, aad and sealed must not overlap dst");
  }
  switch (tender::openInto(key.data, aad.data, aad.length, sealed.data, sealed.length, dst.data)) {
    case tender::AeadStatus::Ok:
      break;
    case tender::AeadStatus::AuthFailed:
      throw Napi::Error::New(env, "authentication failed");
    default:
      throw Napi::Error::New(env, "AES-256-GCM decryption failed in OpenSSL");
  }
  return Napi::Number::New(env, static_cast<double>(plainLen));
}

// ---- page cache (pagecache.h) -------------------------------------------------------------------

int fdArg(const Napi::Env& env, const Napi::Value& v) {
  const size_t fd = index(env, v, "fd");
  if (fd > 0x7fffffff) throw Napi::RangeError::New(env, "fd out of range");
  return static_cast<int>(fd);
}

Napi::Error errnoError(const Napi::Env& env, const char* call, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(call) + " failed: " + std::strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

// (fd, offset, length) arguments of the page-cache functions
struct FileRange {
  int fd;
  uint64_t offset;
  uint64_t length;
};

FileRange fileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return {fdArg(env, info[0]), index(env, info[1], "offset"), index(env, info[2], "length")};
}

// residentPages(fd, offset, length): Uint8Array, one byte per page spanned (bit 0: cached)
Napi::Value ResidentPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const FileRange r = fileRange(info);
  Napi::Uint8Array out = Napi::Uint8Array::New(env, tender::pagesSpanned(r.offset, r.length));
  if (const int err = tender::residentPages(r.fd, r.offset, r.length, out.Data())) throw errnoError(env, "mincore", err);
  return out;
}

// dropPages(fd, offset, length, before): evicts the pages of the range that `before` (from
// residentPages for the same range) says were not cached
Napi::Value DropPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const FileRange r = fileRange(info);
  const ByteView before = bytes(env, info[3], "before");
  if (before.length != tender::pagesSpanned(r.offset, r.length)) throw Napi::RangeError::New(env, "before must have one byte per page of the range");
  if (const int err = tender::dropPages(r.fd, r.offset, r.length, before.data)) throw errnoError(env, "posix_fadvise", err);
  return env.Undefined();
}

// ---- directory metadata -------------------------------------------------------------------------

#ifdef TENDER_HAVE_FSTATAT
constexpr size_t kStatFields = 14;

// lstatAt(dir, names): Float64Array of kStatFields per name: errno (0: ok), mode, uid, gid, size,
// blocks, mtime sec, mtime nsec, ctime sec, ctime nsec, ino, dev, nlink, rdev. One call per
// directory, fstatat on the open directory: no path resolution per entry, no object per entry.
Napi::Value LstatAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsArray()) throw Napi::TypeError::New(env, "lstatAt(dir: string, names: string[])");
  const std::string dir = info[0].As<Napi::String>().Utf8Value();
  Napi::Array names = info[1].As<Napi::Array>();
  const uint32_t n = names.Length();
  const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw errnoError(env, "open", errno);
  Napi::Float64Array out = Napi::Float64Array::New(env, static_cast<size_t>(n) * kStatFields);
  double* f = out.Data();
  for (uint32_t i = 0; i < n; i++, f += kStatFields) {
    Napi::Value v = names[i];
    if (!v.IsString()) {
      close(dfd);
      throw Napi::TypeError::New(env, "names must be strings");
    }
    struct stat st;
    if (fstatat(dfd, v.As<Napi::String>().Utf8Value().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      f[0] = errno;
      continue;
    }
#if defined(__APPLE__)
    const struct timespec mt = st.st_mtimespec, ct = st.st_ctimespec;
#else
    const struct timespec mt = st.st_mtim, ct = st.st_ctim;
#endif
    const double fields[kStatFields] = {0, double(st.st_mode), double(st.st_uid), double(st.st_gid), double(st.st_size),
                                        double(st.st_blocks), double(mt.tv_sec), double(mt.tv_nsec), double(ct.tv_sec),
                                        double(ct.tv_nsec), double(st.st_ino), double(st.st_dev), double(st.st_nlink),
                                        double(st.st_rdev)};
    std::memcpy(f, fields, sizeof fields);
  }
  close(dfd);
  return out;
}
#endif

// ---- open-for-writing probe (lease.h) ------------------------------------------------------------

// openForWriting(path): true when some process has the file open for writing, false when
// nobody has, undefined when it cannot be told (see lease.h).
Napi::Value OpenForWriting(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "openForWriting(path: string)");
  int err = 0;
  const int rc = tender::fileOpenForWriting(info[0].As<Napi::String>().Utf8Value().c_str(), &err);
  if (rc < 0) return env.Undefined();
  return Napi::Boolean::New(env, rc == 1);
}

// ---- filesystem freeze and sync (freeze.h) ------------------------------------------------------

#ifdef TENDER_HAVE_FSTATAT
// Opens `path` read-only (a directory or a file: any open file of a filesystem names it).
int openForIoctl(const Napi::Env& env, const Napi::Value& v, const char* call) {
  if (!v.IsString()) throw Napi::TypeError::New(env, std::string(call) + "(path: string)");
  const int fd = open(v.As<Napi::String>().Utf8Value().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw errnoError(env, "open", errno);
  return fd;
}

// thawFs(path): true when the filesystem holding path was frozen and is thawed now, false when it
// was not frozen (FITHAW gives EINVAL); throws for anything else (EPERM: not root). FITHAW only
// lifts the freeze, so it is quick and runs on the calling thread.
Napi::Value ThawFs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = openForIoctl(env, info[0], "thawFs");
  const int err = tender::thawFs(fd);
  close(fd);
  if (err != 0 && err != EINVAL) throw errnoError(env, "FITHAW", err);
  return Napi::Boolean::New(env, err == 0);
}

// syncFs(path): Promise<void>: syncfs(2) on the filesystem holding path, on a libuv worker
// thread (writing back a volume's dirty pages can take seconds).
class SyncFsWorker : public Napi::AsyncWorker {
 public:
  SyncFsWorker(Napi::Env env, int fd) : Napi::AsyncWorker(env), fd_(fd), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    err_ = tender::syncFs(fd_);
    close(fd_);
  }
  void OnOK() override {
    if (err_ == 0) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(errnoError(Env(), "syncfs", err_).Value());
    }
  }

 private:
  int fd_;
  int err_ = 0;
  Napi::Promise::Deferred deferred_;
};

Napi::Value SyncFs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* worker = new SyncFsWorker(env, openForIoctl(env, info[0], "syncFs"));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}
#endif

// writeDirect(fd, parts): Promise<number>: the parts written to fd (opened with O_DIRECT) from
// offset 0 through an aligned bounce buffer, on a libuv worker thread (directio.cc); resolves with
// the byte count. The parts array is held (so are its buffers) until the write has ended.
class WriteDirectWorker : public Napi::AsyncWorker {
 public:
  WriteDirectWorker(Napi::Env env, int fd, Napi::Array parts)
      : Napi::AsyncWorker(env), fd_(fd), deferred_(Napi::Promise::Deferred::New(env)), held_(Napi::Persistent(parts.As<Napi::Object>())) {
    for (uint32_t i = 0; i < parts.Length(); i++) {
      const ByteView view = bytes(env, parts.Get(i), "part");
      views_.push_back({view.data, view.length});
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { err_ = tender::writeDirect(fd_, views_.data(), views_.size(), &written_); }
  void OnOK() override {
    held_.Reset();
    if (err_ == 0) {
      deferred_.Resolve(Napi::Number::New(Env(), static_cast<double>(written_)));
    } else {
      deferred_.Reject(errnoError(Env(), "write (O_DIRECT)", err_).Value());
    }
  }

 private:
  int fd_;
  int err_ = 0;
  uint64_t written_ = 0;
  std::vector<tender::ConstBytes> views_;
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference held_;
};

Napi::Value WriteDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "writeDirect(fd, parts: Uint8Array[])");
  const uint32_t fd = u32(env, info[0], "fd");
  auto* worker = new WriteDirectWorker(env, static_cast<int>(fd), info[1].As<Napi::Array>());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("GearChunker", GearChunker::Init(env));
  exports.Set("shuffle", Napi::Function::New<Shuffle>(env, "shuffle"));
  exports.Set("unshufflePlanes", Napi::Function::New<UnshufflePlanes>(env, "unshufflePlanes"));
  // sealInto/openInto exist only when the OpenSSL inside this node can be used (seal.h); otherwise
  // sealUnavailable says why and src/crypto/seal-into.ts falls back to node:crypto.
  if (const char* why = tender::aeadUnavailableReason()) {
    exports.Set("sealUnavailable", Napi::String::New(env, why));
  } else {
    exports.Set("sealInto", Napi::Function::New<SealInto>(env, "sealInto"));
    exports.Set("openInto", Napi::Function::New<OpenInto>(env, "openInto"));
  }
  if (const char* why = tender::pageCacheUnavailableReason()) {
    exports.Set("pageCacheUnavailable", Napi::String::New(env, why));
  } else {
    exports.Set("residentPages", Napi::Function::New<ResidentPages>(env, "residentPages"));
    exports.Set("dropPages", Napi::Function::New<DropPages>(env, "dropPages"));
  }
  if (const char* why = tender::leaseUnavailableReason()) {
    exports.Set("leaseUnavailable", Napi::String::New(env, why));
  } else {
    exports.Set("openForWriting", Napi::Function::New<OpenForWriting>(env, "openForWriting"));
  }
#ifdef TENDER_HAVE_FSTATAT
  exports.Set("lstatAt", Napi::Function::New<LstatAt>(env, "lstatAt"));
  if (const char* why = tender::freezeUnavailableReason()) {
    exports.Set("freezeUnavailable", Napi::String::New(env, why));
  } else {
    exports.Set("thawFs", Napi::Function::New<ThawFs>(env, "thawFs"));
    exports.Set("syncFs", Napi::Function::New<SyncFs>(env, "syncFs"));
  }
#else
  exports.Set("freezeUnavailable", Napi::String::New(env, tender::freezeUnavailableReason()));
#endif
  if (const char* why = tender::directWriteUnavailableReason()) {
    exports.Set("directWriteUnavailable", Napi::String::New(env, why));
  } else {
    exports.Set("writeDirect", Napi::Function::New<WriteDirect>(env, "writeDirect"));
  }
  tender::exportNvml(env, exports);
  // Adding functions keeps abiVersion at 1: src/backup/chunk/native.ts checks it, and callers of
  // the new functions test for them (src/crypto/seal-into.ts).
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}

}  // namespace

NODE_API_MODULE(tender_native, Init)
