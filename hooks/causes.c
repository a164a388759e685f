/* Where a byte's cause is decided: from the scope the thread was in (what OpenSSL was asked to do)
 * and the source file OpenSSL names for the allocation (which subsystem holds it). Runs once per new
 * call site, never per allocation. */
#include <string.h>

#include "shim.h"

const char *const cause_names[N_CAUSES] = {
    "ca_store",    "own_certificate", "peer_certificate", "record_buffers",
    "compression", "handshake",       "session",          "cipher_state",
    "bio",         "connection",      "context",          "thread_state",
    "library",     "other",
};

const char *const scope_names[N_SCOPES] = {
    "none", "ctx_new",  "ctx",      "ca_store", "own_cert", "ssl_new", "handshake",
    "io",   "shutdown", "ssl_ctrl", "ssl_free", "static",   "library", "thread",
};

static int has(const char *file, const char *part) { return strstr(file, part) != NULL; }

/* ---- OpenSSL's source layout by version: the shim's only version knowledge ----
 * A cause is read from the file OpenSSL names for each allocation (Debian's out-of-tree builds pass
 * "../ssl/ssl_lib.c"). Where the layout differs between the versions tlsprof is checked against
 * (1.1.1w, 3.0.x, 3.5.x: docs/compatibility.md, "Versions"), each version's path is named here.
 * Entry points need no such list: the shim resolves every hooked function by name, so one a version
 * lacks (1.1.1 has no EVP_*_fetch, no providers, no SSL_CTX_new_ex) is simply never hooked.
 *
 *   record layer  1.1.1-3.1  ssl/record/{rec_layer_s3,ssl3_buffer,ssl3_record}.c: the buffers
 *                 3.2+       ssl/record/methods/: tls_common.c allocates the buffers (16.7 KiB
 *                            each way) and the layer object itself (OSSL_RECORD_LAYER, 4.4 KiB
 *                            each way on 3.5, kept by every connection: `connection`, not a buffer
 *                            RELEASE_BUFFERS could free); tls13_meth.c, tls1_meth.c, ssl3_meth.c
 *                            the record protection's IVs and keys (`cipher_state`). The method
 *                            files are named *_meth.c but hold per-connection state.
 *   QUIC          3.2+       ssl/quic/: a QUIC connection's stream and packet buffers
 *   SSL object    1.1.1-3.1  struct ssl_st; 3.2+ SSL_CONNECTION inside it: both from ssl/ssl_lib.c
 *                            under SSL_new, i.e. `connection` by scope on every version
 *   one-time      3.0+       providers, name map and method stores (crypto/core_*, property/ ...)
 *                 1.1.1      no providers: object names, engines, error strings (o_names.c ...)
 *   DRBGs         1.1.1      crypto/rand/drbg_lib.c   3.0+ providers/implementations/rands/
 *   X25519 keys   all        crypto/ec/ecx_meth.c is the legacy key method: on 1.1.1 it makes each
 *                            handshake's key share (3.x: providers/.../keymgmt/ecx_kmgmt.c) */
static int is_record_layer_code(const char *f)
{
    return has(f, "ssl/record/") /* every version, methods/ included (3.2+) */ || has(f, "ssl/quic/quic_sstream.c") ||
           has(f, "ssl/quic/quic_rstream.c") || /* 3.2+ */
           has(f, "ssl/quic/quic_record_") || has(f, "ssl/quic/quic_sf_list.c");
}

/* 3.2+: below this first block size, a record-layer site holds the layer object, not a buffer (a
 * buffer is a whole record: 16.7 KiB unless the peers agreed on a smaller max_fragment_length) */
#define RECORD_BUFFER_MIN 8192

static int is_record_protection_code(const char *f)
{
    return has(f, "ssl/record/methods/tls13_meth.c") || has(f, "ssl/record/methods/tls1_meth.c") ||
           has(f, "ssl/record/methods/ssl3_meth.c"); /* 3.2+ */
}

/* Files named like method tables that hold per-connection data on some version. */
static int is_method_named_data(const char *f)
{
    return has(f, "ssl/record/methods/") /* 3.2+ */ || has(f, "crypto/ec/ecx_meth.c") /* 1.1.1 */;
}

static int is_certificate_code(const char *f)
{
    return has(f, "/x509/") || has(f, "/asn1/") || has(f, "/x509v3/") || has(f, "/pem/") || has(f, "/stack/") ||
           has(f, "/objects/");
}

static int is_cipher_code(const char *f)
{
    return has(f, "/evp/") || has(f, "/modes/") || has(f, "/aes/") || has(f, "/chacha/") || has(f, "/poly1305/") ||
           has(f, "/hmac/") || has(f, "/providers/implementations/ciphers") ||
           has(f, "/providers/implementations/digests") || has(f, "/providers/implementations/macs") ||
           has(f, "/providers/implementations/kdfs") || has(f, "t1_enc.c") || has(f, "tls13_enc.c");
}

/* OpenSSL's one-time state: configuration, providers, the name map and method stores that fetches
 * fill, object names, error strings. Built on first use and kept for the life of the process. */
static int is_library_code(const char *f)
{
    return has(f, "crypto/core_") || has(f, "/property/") || has(f, "crypto/provider") || has(f, "crypto/context.c") ||
           has(f, "crypto/init.c") || has(f, "/conf/") || has(f, "/dso/") || has(f, "/engine/") ||
           has(f, "o_names.c") || has(f, "obj_dat.c") || (has(f, "_meth.c") && !is_method_named_data(f)) ||
           has(f, "evp_fetch.c") || has(f, "crypto/ex_data.c") || has(f, "providers/defltprov.c") ||
           has(f, "providers/baseprov.c") || has(f, "providers/nullprov.c") || has(f, "providers/common/") ||
           has(f, "ssl/ssl_init.c");
}

/* Per-thread state: error queues, thread-exit handlers and the per-thread random generators
 * (OpenSSL 3 keeps a public and a private DRBG per thread). */
static int is_thread_code(const char *f)
{
    return has(f, "crypto/err/") || has(f, "initthread.c") || has(f, "/rand/") ||
           has(f, "/providers/implementations/rands");
}

uint8_t classify_cause(const char *file, uint8_t scope, size_t first_size)
{
    if (scope == SC_LIBRARY) return C_LIBRARY;
    if (file && is_library_code(file)) return C_LIBRARY;
    if (scope == SC_THREAD) return C_THREAD_STATE;
    if (scope == SC_CA) return C_CA_STORE;
    if (scope == SC_OWN_CERT) return C_OWN_CERT;
    if (!file) return C_OTHER;
    if (is_thread_code(file)) return C_THREAD_STATE;
    if (has(file, "/comp/") || has(file, "c_zlib")) return C_COMPRESSION;
    if (is_record_protection_code(file)) return C_CIPHER_STATE;
    if (has(file, "ssl/record/methods/tls_common.c") && first_size < RECORD_BUFFER_MIN) return C_CONNECTION;
    if (is_record_layer_code(file)) return C_RECORD_BUFFERS;
    if (has(file, "ssl_sess.c")) return C_SESSION;
    /* BIO structs and their BUF_MEM buffers (Python's MemoryBIO, asyncio's transport) */
    if (has(file, "/bio/") || has(file, "/buffer/")) return C_BIO;
    switch (scope) {
    case SC_STATIC:
        if (is_cipher_code(file)) return C_CIPHER_STATE;
        if (has(file, "ssl/statem/")) return C_HANDSHAKE;
        return C_OTHER; /* certificates: a CA store and a peer's chain look alike without a scope */
    case SC_HANDSHAKE:
    case SC_IO:
    case SC_SHUTDOWN:
        if (is_cipher_code(file)) return C_CIPHER_STATE;
        if (is_certificate_code(file)) return C_PEER_CERT;
        return C_HANDSHAKE;
    case SC_SSL_NEW: /* the SSL object and what SSL_new copies into it from its context */
    case SC_SSL_CTRL:
    case SC_SSL_FREE:
        if (is_cipher_code(file)) return C_CIPHER_STATE;
        return C_CONNECTION;
    case SC_CTX_NEW: /* the SSL_CTX object and its settings */
    case SC_CTX:
        if (is_cipher_code(file)) return C_CIPHER_STATE;
        return C_CONTEXT;
    default: return C_OTHER;
    }
}
