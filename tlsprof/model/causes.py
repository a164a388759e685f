"""The cause vocabulary: why a live OpenSSL byte exists. Fixed by schema `tlsprof.report/2`
(`/1` had no connection, context, thread_state or library: those bytes were `other`).

Every `by_cause` map in a report uses only these ids; renderers show them in this order with
these labels. Adding an id is a schema change (it changes what `other` means).
"""

# Ordered: the order renderers list causes in when bytes tie, and the order of the docs.
CAUSES = (
    "ca_store",
    "own_certificate",
    "peer_certificate",
    "record_buffers",
    "compression",
    "handshake",
    "session",
    "cipher_state",
    "bio",
    "connection",
    "context",
    "thread_state",
    "library",
    "other",
)

# Causes whose bytes the shim charges to the process, never to a context or connection.
PROCESS_WIDE = ("thread_state", "library")

LABELS = {
    "ca_store": "CA store",
    "own_certificate": "own certificate",
    "peer_certificate": "peer certificate",
    "record_buffers": "record buffers",
    "compression": "compression",
    "handshake": "handshake state",
    "session": "sessions",
    "cipher_state": "cipher state",
    "bio": "BIOs",
    "connection": "SSL object",
    "context": "SSL_CTX object",
    "thread_state": "per-thread state",
    "library": "OpenSSL library",
    "other": "other",
}

DESCRIPTIONS = {
    "ca_store": "trust anchors parsed into an X509_STORE (load_default_certs, load_verify_locations)",
    "own_certificate": "the endpoint's own certificate chain and private key",
    "peer_certificate": "the certificate chain the peer sent, kept after verification",
    "record_buffers": "TLS record read/write buffers",
    "compression": "TLS compression state (zlib), when compression was negotiated",
    "handshake": "transient handshake state still live (key shares, transcript, messages)",
    "session": "sessions, the session cache and session tickets",
    "cipher_state": "symmetric cipher and MAC contexts of the record layer",
    "bio": "BIO objects and their buffers",
    "connection": "the SSL object itself and what SSL_new copies into it from its context (settings, "
    "certificate slots, verify parameters)",
    "context": "the SSL_CTX object itself and its settings (cipher lists, certificate slots, callbacks)",
    "thread_state": "per-thread state: error queues and per-thread random generators (process-wide)",
    "library": "OpenSSL's one-time state: configuration, providers, method caches, object names, error "
    "strings (process-wide, never charged to a context or connection)",
    "other": "OpenSSL allocations no other cause claims",
}

assert set(LABELS) == set(CAUSES) == set(DESCRIPTIONS)


def label(cause: str) -> str:
    return LABELS.get(cause, cause)


def description(cause: str) -> str:
    return DESCRIPTIONS.get(cause, "")
