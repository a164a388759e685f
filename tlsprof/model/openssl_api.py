"""Constants of OpenSSL's public API the report reads from a context's mode (ssl.h)."""

# SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS): idle connections give their record buffers back
SSL_MODE_RELEASE_BUFFERS = 0x10
