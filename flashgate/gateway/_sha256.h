/* SHA-256 (FIPS 180-4, section 6.2) for the buyer-token check (_token.pyx).
 *
 * The state is eight uint32 words H0..H7. A compression function absorbs whole
 * 64-byte blocks into it; fg_sha256_finish pads the tail of a message (0x80, zeros,
 * the message's length in bits as a big-endian uint64, section 5.1.1) and writes
 * the digest. The state a compression starts from may be the initial value
 * (section 5.3.3) or a midstate saved after some leading blocks: HMAC's
 * key ^ ipad and key ^ opad blocks are absorbed once per key and the midstates kept.
 *
 * Two compression functions compute the same thing: fg_sha256_compress_portable
 * (plain C99) and, on x86-64 with GCC or Clang, fg_sha256_compress_hw (the SHA
 * extensions, for CPUs where fg_sha256_hw_available() is true). No crypto library.
 */
#ifndef FLASHGATE_SHA256_H
#define FLASHGATE_SHA256_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* section 4.2.2: the first 32 bits of the fractional parts of the cube roots of
 * the first 64 primes */
static const uint32_t fg_sha256_k[64] = {
    0x428a2f98U, 0x71374491U, 0xb5c0fbcfU, 0xe9b5dba5U,
    0x3956c25bU, 0x59f111f1U, 0x923f82a4U, 0xab1c5ed5U,
    0xd807aa98U, 0x12835b01U, 0x243185beU, 0x550c7dc3U,
    0x72be5d74U, 0x80deb1feU, 0x9bdc06a7U, 0xc19bf174U,
    0xe49b69c1U, 0xefbe4786U, 0x0fc19dc6U, 0x240ca1ccU,
    0x2de92c6fU, 0x4a7484aaU, 0x5cb0a9dcU, 0x76f988daU,
    0x983e5152U, 0xa831c66dU, 0xb00327c8U, 0xbf597fc7U,
    0xc6e00bf3U, 0xd5a79147U, 0x06ca6351U, 0x14292967U,
    0x27b70a85U, 0x2e1b2138U, 0x4d2c6dfcU, 0x53380d13U,
    0x650a7354U, 0x766a0abbU, 0x81c2c92eU, 0x92722c85U,
    0xa2bfe8a1U, 0xa81a664bU, 0xc24b8b70U, 0xc76c51a3U,
    0xd192e819U, 0xd6990624U, 0xf40e3585U, 0x106aa070U,
    0x19a4c116U, 0x1e376c08U, 0x2748774cU, 0x34b0bcb5U,
    0x391c0cb3U, 0x4ed8aa4aU, 0x5b9cca4fU, 0x682e6ff3U,
    0x748f82eeU, 0x78a5636fU, 0x84c87814U, 0x8cc70208U,
    0x90befffaU, 0xa4506cebU, 0xbef9a3f7U, 0xc67178f2U,
};

/* section 5.3.3: the first 32 bits of the fractional parts of the square roots of
 * the first 8 primes */
static const uint32_t fg_sha256_iv[8] = {
    0x6a09e667U, 0xbb67ae85U, 0x3c6ef372U, 0xa54ff53aU,
    0x510e527fU, 0x9b05688cU, 0x1f83d9abU, 0x5be0cd19U,
};

/* absorbs n whole 64-byte blocks at p into the state st */
typedef void (*fg_sha256_compress_fn)(uint32_t *st, const unsigned char *p, size_t n);

/* big-endian words (section 3.1): one load or store and a byte swap where the
 * compiler can say the CPU is little-endian, byte by byte elsewhere */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__BYTE_ORDER__) \
    && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static inline uint32_t fg_load_be32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

static inline void fg_store_be32(unsigned char *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
}
#else
static inline uint32_t fg_load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void fg_store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
#endif

static inline void fg_store_be64(unsigned char *p, uint64_t v)
{
    fg_store_be32(p, (uint32_t)(v >> 32));
    fg_store_be32(p + 4, (uint32_t)v);
}

/* section 4.1.2 (ROTR: section 3.2) */
#define FG_ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define FG_CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))            /* (x & y) ^ (~x & z) */
#define FG_MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))   /* (x&y) ^ (x&z) ^ (y&z) */
#define FG_BSIG0(x) (FG_ROTR(x, 2) ^ FG_ROTR(x, 13) ^ FG_ROTR(x, 22))
#define FG_BSIG1(x) (FG_ROTR(x, 6) ^ FG_ROTR(x, 11) ^ FG_ROTR(x, 25))
#define FG_SSIG0(x) (FG_ROTR(x, 7) ^ FG_ROTR(x, 18) ^ ((x) >> 3))
#define FG_SSIG1(x) (FG_ROTR(x, 17) ^ FG_ROTR(x, 19) ^ ((x) >> 10))

/* One round t of section 6.2.2 step 3, written so that no variable moves: instead
 * of h=g, g=f, ..., the next round is called with the names rotated by one. */
#define FG_ROUND(a, b, c, d, e, f, g, h, t) do {                               \
        uint32_t t1_ = (h) + FG_BSIG1(e) + FG_CH(e, f, g) + fg_sha256_k[t] + w[t]; \
        (d) += t1_;                                                            \
        (h) = t1_ + FG_BSIG0(a) + FG_MAJ(a, b, c);                             \
    } while (0)

#define FG_ROUND8(t) do {                                                      \
        FG_ROUND(a, b, c, d, e, f, g, h, (t) + 0);                             \
        FG_ROUND(h, a, b, c, d, e, f, g, (t) + 1);                             \
        FG_ROUND(g, h, a, b, c, d, e, f, (t) + 2);                             \
        FG_ROUND(f, g, h, a, b, c, d, e, (t) + 3);                             \
        FG_ROUND(e, f, g, h, a, b, c, d, (t) + 4);                             \
        FG_ROUND(d, e, f, g, h, a, b, c, (t) + 5);                             \
        FG_ROUND(c, d, e, f, g, h, a, b, (t) + 6);                             \
        FG_ROUND(b, c, d, e, f, g, h, a, (t) + 7);                             \
    } while (0)

/* Section 6.2.2, portable C: any compiler, any CPU. */
static void fg_sha256_compress_portable(uint32_t *st, const unsigned char *p, size_t n)
{
    uint32_t w[64];
    uint32_t a, b, c, d, e, f, g, h;
    int t;

    for (; n; n--, p += 64) {
        /* step 1: the message schedule */
        for (t = 0; t < 16; t++)
            w[t] = fg_load_be32(p + 4 * t);
        for (t = 16; t < 64; t++)
            w[t] = FG_SSIG1(w[t - 2]) + w[t - 7] + FG_SSIG0(w[t - 15]) + w[t - 16];
        /* step 2 */
        a = st[0]; b = st[1]; c = st[2]; d = st[3];
        e = st[4]; f = st[5]; g = st[6]; h = st[7];
        /* step 3: 64 rounds, 8 at a time (after 8 the names are back in place) */
        for (t = 0; t < 64; t += 8)
            FG_ROUND8(t);
        /* step 4 */
        st[0] += a; st[1] += b; st[2] += c; st[3] += d;
        st[4] += e; st[5] += f; st[6] += g; st[7] += h;
    }
}

/* Section 6.2.2 with the x86 SHA extensions (SHA256RNDS2 does two rounds,
 * SHA256MSG1/MSG2 the message schedule four words at a time). Compiled for those
 * instructions whatever the compiler's target; call it only where
 * fg_sha256_hw_available() says the CPU has them. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FG_SHA256_HW 1
#include <cpuid.h>
#include <immintrin.h>

/* SHA (CPUID.(EAX=7,ECX=0):EBX bit 29), SSE4.1 and SSSE3 (CPUID.1:ECX bits 19, 9) */
static int fg_sha256_hw_available(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1U << 19)) || !(c & (1U << 9)))
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b & (1U << 29)) != 0;
}

/* Four rounds t..t+3: w holds W[t..t+3] (dword 0 = W[t]). SHA256RNDS2 takes the
 * state as two halves, "ABEF" and "CDGH" (dword 3 = A resp. C), and returns the
 * new ABEF; after two rounds the old ABEF is the new CDGH, so the two variables
 * swap roles and swap back. */
#define FG_HW_ROUNDS4(w, t) do {                                               \
        __m128i wk_ = _mm_add_epi32((w),                                       \
                _mm_loadu_si128((const __m128i *)(fg_sha256_k + (t))));        \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk_);                         \
        wk_ = _mm_shuffle_epi32(wk_, 0x0E);                                    \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, wk_);                         \
    } while (0)

/* W[t..t+3] into m0, from m0 = W[t-16..], m1 = W[t-12..], m2 = W[t-8..],
 * m3 = W[t-4..]: MSG1 adds SSIG0(W[j-15]) to W[j-16], the alignment supplies
 * W[j-7], MSG2 adds SSIG1(W[j-2]) (of the words it is making, for the last two) */
#define FG_HW_SCHEDULE(m0, m1, m2, m3)                                         \
    (m0) = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), \
                                              _mm_alignr_epi8((m3), (m2), 4)), (m3))

#define FG_HW_ROUNDS16(t) do {                                                 \
        FG_HW_SCHEDULE(m0, m1, m2, m3); FG_HW_ROUNDS4(m0, (t) + 0);            \
        FG_HW_SCHEDULE(m1, m2, m3, m0); FG_HW_ROUNDS4(m1, (t) + 4);            \
        FG_HW_SCHEDULE(m2, m3, m0, m1); FG_HW_ROUNDS4(m2, (t) + 8);            \
        FG_HW_SCHEDULE(m3, m0, m1, m2); FG_HW_ROUNDS4(m3, (t) + 12);           \
    } while (0)

__attribute__((target("sha,sse4.1")))
static void fg_sha256_compress_hw(uint32_t *st, const unsigned char *p, size_t n)
{
    /* big-endian words: reverse the bytes of each dword */
    const __m128i bswap = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
    __m128i abef, cdgh, t, abef0, cdgh0, m0, m1, m2, m3;

    /* H0..H7 (A..H) into the ABEF / CDGH halves (listed from dword 0 up) */
    t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)st), 0xB1);      /* B A D C */
    cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(st + 4)), 0x1B); /* H G F E */
    abef = _mm_alignr_epi8(t, cdgh, 8);                                     /* F E B A */
    cdgh = _mm_blend_epi16(cdgh, t, 0xF0);                                  /* H G D C */

    for (; n; n--, p += 64) {
        abef0 = abef;
        cdgh0 = cdgh;
        m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), bswap);
        m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), bswap);
        m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), bswap);
        m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), bswap);
        FG_HW_ROUNDS4(m0, 0);
        FG_HW_ROUNDS4(m1, 4);
        FG_HW_ROUNDS4(m2, 8);
        FG_HW_ROUNDS4(m3, 12);
        FG_HW_ROUNDS16(16);
        FG_HW_ROUNDS16(32);
        FG_HW_ROUNDS16(48);
        abef = _mm_add_epi32(abef, abef0);
        cdgh = _mm_add_epi32(cdgh, cdgh0);
    }

    t = _mm_shuffle_epi32(abef, 0x1B);                                      /* A B E F */
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1);                                   /* G H C D */
    _mm_storeu_si128((__m128i *)st, _mm_blend_epi16(t, cdgh, 0xF0));        /* A B C D */
    _mm_storeu_si128((__m128i *)(st + 4), _mm_alignr_epi8(cdgh, t, 8));     /* E F G H */
}

#else /* no x86 SHA extensions to use: the portable function stands in */
#define FG_SHA256_HW 0

static int fg_sha256_hw_available(void)
{
    return 0;
}

static void fg_sha256_compress_hw(uint32_t *st, const unsigned char *p, size_t n)
{
    fg_sha256_compress_portable(st, p, n);
}
#endif

/* The digest of a message whose first `done` bytes (a multiple of 64) the state
 * st0 has absorbed already, and whose remaining `len` bytes are at msg. st0 is not
 * changed. Whole blocks of msg are absorbed in place; the tail and the padding take
 * one or two more compressions (two when the tail has more than 55 bytes).
 * (The padded tail is zeroed whole and its length written as one 8-byte store:
 * fewer small stores for the compression's wide loads to wait on.) */
static void fg_sha256_finish(fg_sha256_compress_fn compress, const uint32_t *st0,
                             uint64_t done, const unsigned char *msg, size_t len,
                             unsigned char *out)
{
    uint32_t st[8];
    unsigned char tail[128];
    uint64_t bits = (done + (uint64_t)len) * 8;
    size_t whole = len / 64, rest, padded;
    int i;

    memcpy(st, st0, sizeof st);
    if (whole)
        compress(st, msg, whole);
    rest = len - whole * 64;
    padded = rest + 9 <= 64 ? 64 : 128;
    memset(tail, 0, sizeof tail);
    memcpy(tail, msg + whole * 64, rest);
    tail[rest] = 0x80;
    fg_store_be64(tail + padded - 8, bits);
    compress(st, tail, padded / 64);
    for (i = 0; i < 8; i++)
        fg_store_be32(out + 4 * i, st[i]);
}

#endif /* FLASHGATE_SHA256_H */
