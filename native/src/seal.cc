// AES-256-GCM sealing straight into caller-provided memory (see seal.h). Called from the JS thread
// of the main isolate or of a worker_thread; each OS thread keeps one EVP_CIPHER_CTX for its whole
// life, so a call allocates nothing (neither JS objects nor C heap) once the thread has warmed up.
#include "seal.h"

#include <cstring>

#ifndef TENDER_NO_OPENSSL
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/rand.h>
#if defined(__APPLE__)
#include <dlfcn.h>
#endif

// The OpenSSL functions this file calls. They are not linked against a libcrypto: the addon leaves
// them undefined and the dynamic loader binds them to the copy inside the node process (see
// native/binding.gyp). A node that does not export one of them would abort the process with
// "symbol lookup error" on the first call (lazy binding), so aeadUnavailableReason() checks them
// all up front and the addon then just does not offer sealInto/openInto. On ELF they are declared
// weak: a missing one resolves to a null address instead of failing the load, and no dlsym (which
// would pull in dlsym@GLIBC_2.34 and raise the addon's minimum glibc) is needed.
#define TENDER_OPENSSL_SYMBOLS(X)                                                                      \
  X(EVP_CIPHER_CTX_new) X(EVP_CIPHER_CTX_free) X(EVP_CIPHER_CTX_ctrl) X(EVP_CipherInit_ex)             \
  X(EVP_EncryptUpdate) X(EVP_EncryptFinal_ex) X(EVP_DecryptUpdate) X(EVP_DecryptFinal_ex)              \
  X(EVP_aes_256_gcm) X(RAND_bytes) X(ERR_clear_error) X(OpenSSL_version_num)

#if defined(__ELF__)
#define TENDER_PRAGMA(x) _Pragma(#x)
#define TENDER_WEAK(name) TENDER_PRAGMA(weak name)
TENDER_OPENSSL_SYMBOLS(TENDER_WEAK)
#define TENDER_HAS_SYMBOL(name) (reinterpret_cast<const void*>(&name) != nullptr)
#elif defined(__APPLE__)
#define TENDER_HAS_SYMBOL(name) (dlsym(RTLD_DEFAULT, #name) != nullptr)
#else
#define TENDER_HAS_SYMBOL(name) true
#endif
#endif

namespace tender {

#ifdef TENDER_NO_OPENSSL

const char* aeadUnavailableReason() {
  return "the native addon was built without sealInto/openInto (TENDER_NO_OPENSSL: no OpenSSL in node, or Windows)";
}
AeadStatus sealInto(const uint8_t*, const uint8_t*, size_t, const uint8_t*, size_t, uint8_t*) {
  return AeadStatus::CipherError;
}
AeadStatus openInto(const uint8_t*, const uint8_t*, size_t, const uint8_t*, size_t, uint8_t*) {
  return AeadStatus::CipherError;
}

#else

namespace {

// EVP_*Update take an int length; feed longer inputs in slices of this many bytes (a multiple of
// the AES block size, so GCM's streaming state is not disturbed by the split).
constexpr size_t kSlice = size_t{1} << 30;

const char* computeUnavailableReason() {
#define TENDER_CHECK_SYMBOL(name) \
  if (!TENDER_HAS_SYMBOL(name)) return "the running node does not export the OpenSSL function " #name;
  TENDER_OPENSSL_SYMBOLS(TENDER_CHECK_SYMBOL)
#undef TENDER_CHECK_SYMBOL
  // The OpenSSL ABI is stable within a major version (3.x); the headers the addon was compiled
  // against must be of the same major version as the library inside node.
  if ((OpenSSL_version_num() >> 28) != (static_cast<unsigned long>(OPENSSL_VERSION_NUMBER) >> 28)) {
    return "the OpenSSL inside node has another major version than the headers the addon was built with "
           "(rebuild with npm run build:native)";
  }
  return nullptr;
}

// One AES-256-GCM context per OS thread, set up once (that first EVP_CipherInit_ex with a cipher
// allocates the provider context) and afterwards re-keyed with EVP_CipherInit_ex(ctx, NULL, ...),
// which reuses the provider context instead of freeing and allocating it again. A JS thread runs
// one call at a time and the calls do not re-enter JS, so the context is never shared.
struct ThreadCipher {
  EVP_CIPHER_CTX* ctx = nullptr;
  ThreadCipher() = default;
  ThreadCipher(const ThreadCipher&) = delete;
  ThreadCipher& operator=(const ThreadCipher&) = delete;
  ~ThreadCipher() { reset(); }  // at thread exit; EVP_CIPHER_CTX_free wipes the key schedule
  void reset() {
    if (ctx != nullptr) EVP_CIPHER_CTX_free(ctx);
    ctx = nullptr;
  }
};

thread_local ThreadCipher threadCipher;

EVP_CIPHER_CTX* contextFor(const uint8_t* key, const uint8_t* iv, int enc) {
  ThreadCipher& tc = threadCipher;
  if (tc.ctx == nullptr) {
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    if (ctx == nullptr) return nullptr;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr, 1) != 1) {
      EVP_CIPHER_CTX_free(ctx);
      return nullptr;
    }
    tc.ctx = ctx;
  }
  // The IV length is GCM's default, 12 bytes: no EVP_CTRL_GCM_SET_IVLEN needed.
  if (EVP_CipherInit_ex(tc.ctx, nullptr, nullptr, key, iv, enc) != 1) return nullptr;
  return tc.ctx;
}

// After any failure: drop the context (the next call builds a fresh one) and OpenSSL's per-thread
// error queue, so a stale entry cannot surface later in an unrelated node:crypto call.
void recover() {
  threadCipher.reset();
  ERR_clear_error();
}

bool addAad(EVP_CIPHER_CTX* ctx, const uint8_t* aad, size_t aadLen, bool enc) {
  while (aadLen > 0) {
    const int n = static_cast<int>(aadLen < kSlice ? aadLen : kSlice);
    int outl = 0;
    const int ok =
        enc ? EVP_EncryptUpdate(ctx, nullptr, &outl, aad, n) : EVP_DecryptUpdate(ctx, nullptr, &outl, aad, n);
    if (ok != 1) return false;
    aad += n;
    aadLen -= static_cast<size_t>(n);
  }
  return true;
}

// GCM is a stream mode: every update writes exactly as many bytes as it reads.
bool crypt(EVP_CIPHER_CTX* ctx, const uint8_t* in, size_t len, uint8_t* out, bool enc) {
  while (len > 0) {
    const int n = static_cast<int>(len < kSlice ? len : kSlice);
    int outl = 0;
    const int ok = enc ? EVP_EncryptUpdate(ctx, out, &outl, in, n) : EVP_DecryptUpdate(ctx, out, &outl, in, n);
    if (ok != 1 || outl != n) return false;
    in += n;
    out += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Zero-fills the output range after a failure (a zero-length dst may have a null data pointer).
void wipe(uint8_t* p, size_t n) {
  if (n > 0) std::memset(p, 0, n);
}

}  // namespace

const char* aeadUnavailableReason() {
  static const char* const reason = computeUnavailableReason();
  return reason;
}

AeadStatus sealInto(const uint8_t* key, const uint8_t* aad, size_t aadLen, const uint8_t* src, size_t srcLen,
                    uint8_t* dst) {
  uint8_t* const nonce = dst;
  uint8_t* const body = dst + kAeadNonceLength;
  uint8_t* const tag = body + srcLen;
  if (RAND_bytes(nonce, static_cast<int>(kAeadNonceLength)) != 1) {
    wipe(dst, srcLen + kAeadOverhead);
    recover();
    return AeadStatus::RandFailed;
  }
  EVP_CIPHER_CTX* ctx = contextFor(key, nonce, 1);
  int outl = 0;
  if (ctx == nullptr || !addAad(ctx, aad, aadLen, true) || !crypt(ctx, src, srcLen, body, true) ||
      EVP_EncryptFinal_ex(ctx, tag, &outl) != 1 || outl != 0 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kAeadTagLength), tag) != 1) {
    wipe(dst, srcLen + kAeadOverhead);
    recover();
    return AeadStatus::CipherError;
  }
  return AeadStatus::Ok;
}

AeadStatus openInto(const uint8_t* key, const uint8_t* aad, size_t aadLen, const uint8_t* sealed, size_t sealedLen,
                    uint8_t* dst) {
  const size_t bodyLen = sealedLen - kAeadOverhead;
  const uint8_t* const nonce = sealed;
  const uint8_t* const body = sealed + kAeadNonceLength;
  // EVP_CTRL_GCM_SET_TAG copies the tag; the API just is not const-correct.
  uint8_t* const tag = const_cast<uint8_t*>(body + bodyLen);
  EVP_CIPHER_CTX* ctx = contextFor(key, nonce, 0);
  if (ctx == nullptr || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kAeadTagLength), tag) != 1 ||
      !addAad(ctx, aad, aadLen, false) || !crypt(ctx, body, bodyLen, dst, false)) {
    wipe(dst, bodyLen);
    recover();
    return AeadStatus::CipherError;
  }
  int outl = 0;
  uint8_t scratch[16];  // GCM's final writes nothing; never hand OpenSSL a pointer past dst's end
  if (EVP_DecryptFinal_ex(ctx, scratch, &outl) != 1) {
    // Tag mismatch: the bytes in dst are unauthenticated, wipe them.
    wipe(dst, bodyLen);
    ERR_clear_error();
    return AeadStatus::AuthFailed;
  }
  return AeadStatus::Ok;
}

#endif  // TENDER_NO_OPENSSL

}  // namespace tender
