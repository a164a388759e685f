#!/usr/bin/env bash
# Builds OpenSSL 3.0.x with zlib compression (Debian's own build is `no-zlib`) from Debian's source
# archive, and copies libssl.so.3 / libcrypto.so.3 into CACHE_DIR/lib. Used by tests through
# LD_LIBRARY_PATH to reproduce the seed's TLS-compression case (see /work/shared/design.md).
#
#   scripts/build-zlib-openssl.sh [CACHE_DIR]     (default: <repo>/.cache/openssl-zlib)
#
# Idempotent: exits at once when both libraries exist and the stamp matches this recipe.
# Non-interactive (works as root in CI with no stdin); installs missing build deps with apt-get and
# adds a deb-src source file under /etc/apt/sources.list.d/ only when no deb-src entry exists.
set -euo pipefail

START=$(date +%s)
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${1:-$REPO_ROOT/.cache/openssl-zlib}"
mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd)"
LIB_DIR="$CACHE_DIR/lib"
SRC_DIR="$CACHE_DIR/src"
STAMP="$CACHE_DIR/stamp"

# Debian's layout for OPENSSLDIR, so the build finds the system openssl.cnf and CA directory.
CONFIGURE_ARGS=(enable-zlib shared no-tests --openssldir=/usr/lib/ssl --libdir=lib)
RECIPE="recipe=2 out-of-tree configure=${CONFIGURE_ARGS[*]} target=build_libs"

log() { echo "build-zlib-openssl: $*" >&2; }
elapsed() { echo "build-zlib-openssl: elapsed $(( $(date +%s) - START ))s" >&2; }

up_to_date() {
  [ -f "$LIB_DIR/libssl.so.3" ] && [ -f "$LIB_DIR/libcrypto.so.3" ] && [ -f "$STAMP" ] &&
    [ "$(head -n1 "$STAMP")" = "$RECIPE" ]
}

if up_to_date; then
  log "up to date in $LIB_DIR ($(sed -n 2p "$STAMP"))"
  elapsed
  exit 0
fi

# One builder at a time per cache dir (parallel test sessions share it).
exec 9>"$CACHE_DIR/.lock"
flock -w 1800 9 || { log "timed out waiting for $CACHE_DIR/.lock"; exit 1; }
if up_to_date; then
  log "built by another process in $LIB_DIR"
  elapsed
  exit 0
fi

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

# --- build dependencies (only the missing ones) -----------------------------------------------
missing=()
for pkg in gcc libc6-dev make perl zlib1g-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing build dependencies: ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

# --- deb-src entries (only if none) ------------------------------------------------------------
has_deb_src() {
  grep -hsE '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    >/dev/null 2>&1 && return 0
  grep -hsiE '^[[:space:]]*Types:.*deb-src' /etc/apt/sources.list.d/*.sources >/dev/null 2>&1
}
if ! has_deb_src || ! apt-cache showsrc openssl 2>/dev/null | grep -q '^Version:'; then
  if ! has_deb_src; then
    log "adding deb-src entries for bookworm in /etc/apt/sources.list.d/tlsprof-deb-src.sources"
    $SUDO tee /etc/apt/sources.list.d/tlsprof-deb-src.sources >/dev/null <<'EOF'
# Added by tlsprof scripts/build-zlib-openssl.sh: source packages, to build OpenSSL with zlib.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  $SUDO apt-get update -qq
fi

# --- orig tarball --------------------------------------------------------------------------------
mkdir -p "$SRC_DIR"
cd "$SRC_DIR"
find_tarball() { ls -1 "$SRC_DIR"/openssl_3.0.*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | sort -V | tail -n1; }
TARBALL="$(find_tarball || true)"
if [ -z "$TARBALL" ]; then
  # apt-get may fetch the orig tarball and then 404 on the .dsc (security archive) and exit non-zero:
  # the orig tarball is all the build needs. Try the default candidate, then each listed version.
  log "fetching the OpenSSL orig tarball with apt-get source"
  apt-get source --download-only -qq openssl </dev/null >"$SRC_DIR/apt-source.log" 2>&1 || true
  TARBALL="$(find_tarball || true)"
  if [ -z "$TARBALL" ]; then
    for v in $(apt-cache showsrc openssl | sed -n 's/^Version: //p' | grep '^3\.0\.' | sort -rV | uniq); do
      apt-get source --download-only -qq "openssl=$v" </dev/null >>"$SRC_DIR/apt-source.log" 2>&1 || true
      TARBALL="$(find_tarball || true)"
      [ -n "$TARBALL" ] && break
    done
  fi
  if [ -z "$TARBALL" ]; then
    log "could not fetch an openssl 3.0.x orig tarball; apt-get said:"
    tail -n 20 "$SRC_DIR/apt-source.log" >&2
    exit 1
  fi
  # Only the orig tarball is used; drop the Debian packaging files apt-get may have fetched.
  rm -f "$SRC_DIR"/openssl_*.debian.tar.* "$SRC_DIR"/openssl_*.dsc
fi
VERSION="$(basename "$TARBALL" | sed -E 's/^openssl_([0-9.]+)\.orig\.tar\..*/\1/')"
log "source: $(basename "$TARBALL") (OpenSSL $VERSION)"

# --- configure and build -------------------------------------------------------------------------
# Out of tree, like Debian's debian/rules (build_shared/): OPENSSL_FILE then reads
# "../ssl/record/ssl3_buffer.c", the same call-site paths the system libcrypto passes to CRYPTO_malloc.
TREE="$SRC_DIR/openssl-$VERSION"
BUILD_DIR="$TREE/build_shared"
if [ ! -f "$BUILD_DIR/.configured" ] || [ "$(cat "$BUILD_DIR/.configured")" != "$RECIPE" ]; then
  rm -rf "$TREE"
  mkdir -p "$BUILD_DIR"
  tar -xf "$TARBALL" -C "$TREE" --strip-components=1
  (cd "$BUILD_DIR" && ../Configure "${CONFIGURE_ARGS[@]}" >"$BUILD_DIR/configure.log" 2>&1) || {
    tail -n 30 "$BUILD_DIR/configure.log" >&2; exit 1; }
  echo "$RECIPE" >"$BUILD_DIR/.configured"
fi
JOBS="$(nproc 2>/dev/null || echo 2)"
log "building libssl/libcrypto with make -j$JOBS build_libs in $BUILD_DIR (takes minutes)"
(cd "$BUILD_DIR" && make -j"$JOBS" build_libs >"$BUILD_DIR/make.log" 2>&1) || {
  tail -n 40 "$BUILD_DIR/make.log" >&2; exit 1; }

# Prove zlib is linked in (enable-zlib without zlib-dynamic links libcrypto against libz).
if ! LC_ALL=C readelf -d "$BUILD_DIR/libcrypto.so.3" | grep -q 'libz\.so'; then
  log "built libcrypto.so.3 does not link libz: zlib support missing"; exit 1
fi

# --- install into the cache (atomic per file, stamp last) ------------------------------------------
mkdir -p "$LIB_DIR"
rm -f "$STAMP"
for lib in libcrypto.so.3 libssl.so.3; do
  cp "$BUILD_DIR/$lib" "$LIB_DIR/.$lib.tmp"
  mv -f "$LIB_DIR/.$lib.tmp" "$LIB_DIR/$lib"
done
printf '%s\nopenssl %s\n' "$RECIPE" "$VERSION" >"$STAMP"

# The build tree is large; keep only the tarball so a rebuild needs no network.
rm -rf "$TREE"
log "installed $LIB_DIR/libssl.so.3 and libcrypto.so.3 (OpenSSL $VERSION, enable-zlib)"
elapsed
