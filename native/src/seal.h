// AES-256-GCM "seal into caller memory" for tender's native addon, kept free of Node-API.
//
// The byte format is src/crypto/aead.ts's: sealed = nonce[12] ‖ ciphertext ‖ tag[16], with a fresh
// random 96-bit nonce per seal and caller-given associated data (docs/design.md, "Notation").
// The OpenSSL used is the one inside the running node process (see native/binding.gyp), so it is
// the same library, provider configuration (FIPS included) and CSPRNG that node:crypto uses.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tender {

constexpr size_t kAeadKeyLength = 32;
constexpr size_t kAeadNonceLength = 12;
constexpr size_t kAeadTagLength = 16;
constexpr size_t kAeadOverhead = kAeadNonceLength + kAeadTagLength;

enum class AeadStatus : int {
  Ok = 0,
  AuthFailed = 1,   // openInto: wrong key, wrong AAD, or any change to nonce, ciphertext or tag
  RandFailed = 2,   // RAND_bytes failed (the CSPRNG is not seeded or is broken)
  CipherError = 3,  // any other OpenSSL failure (context allocation, init, update)
};

// nullptr when sealInto/openInto can be used in this process; otherwise why not (the addon was
// built without OpenSSL, the running node does not export the OpenSSL symbols needed, or its
// OpenSSL major version differs from the headers the addon was compiled against). Computed once.
const char* aeadUnavailableReason();

// Writes nonce ‖ ciphertext ‖ tag (srcLen + kAeadOverhead bytes) to dst. The caller guarantees
// dst has room, key has kAeadKeyLength bytes, and none of key, aad, src overlaps
// dst[0, srcLen + kAeadOverhead). On failure dst's first srcLen + kAeadOverhead bytes are
// zero-filled (never a partial ciphertext under a nonce that might look valid).
AeadStatus sealInto(const uint8_t* key, const uint8_t* aad, size_t aadLen, const uint8_t* src,
                    size_t srcLen, uint8_t* dst);

// Verifies and decrypts sealed (sealedLen >= kAeadOverhead, checked by the caller together with
// dst's size and overlap) into dst[0, sealedLen - kAeadOverhead). The plaintext is produced
// before the tag can be checked, so on AuthFailed (and CipherError) that region of dst is
// overwritten with zeros: it never holds unauthenticated plaintext, but its old contents are gone.
AeadStatus openInto(const uint8_t* key, const uint8_t* aad, size_t aadLen, const uint8_t* sealed,
                    size_t sealedLen, uint8_t* dst);

}  // namespace tender
