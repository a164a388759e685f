#!/usr/bin/env bash
# Builds another OpenSSL series than the system's from Debian's source archive, for tests and
# benchmarks of the versions users run (issue 20):
#
#   scripts/build-openssl.sh SERIES [CACHE_DIR]
#       SERIES     3.5    Debian 13 "trixie"    libssl.so.3   (same soname as 3.0: Python's _ssl
#                                                              loads it through LD_LIBRARY_PATH)
#                  1.1.1  Debian 11 "bullseye"  libssl.so.1.1 (+ the `openssl` app and headers, for a
#                                                              small C server and `openssl s_server`)
#                  3.0    Debian 12 "bookworm"  libssl.so.3   (the system's series, same recipe)
#       CACHE_DIR  default <repo>/.cache/openssl-SERIES
#
# Result: CACHE_DIR/lib (libssl, libcrypto), CACHE_DIR/include (headers, for -I), CACHE_DIR/bin/openssl
# (1.1.1 only), CACHE_DIR/stamp (recipe, then "openssl X.Y.Z"). Idempotent: exits at once when the
# stamp matches this recipe. The apt sources are private (CACHE_DIR/../apt): nothing under /etc/apt
# is touched. Only the orig tarball is fetched; the build runs out of tree in build_shared/ as
# Debian's does, so OPENSSL_FILE reads "../ssl/ssl_lib.c" like the system libcrypto's call sites.
set -euo pipefail

START=$(date +%s)
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERIES="${1:-}"
case "$SERIES" in
  3.5) SUITE=trixie; SONAME=3; EXTRA_TARGETS=(); MAPS=() ;;
  3.0) SUITE=bookworm; SONAME=3; EXTRA_TARGETS=(); MAPS=() ;;
  1.1.1) SUITE=bullseye; SONAME=1.1; EXTRA_TARGETS=(apps/openssl); MAPS=(libcrypto.map libssl.map) ;;
  *) echo "usage: $0 3.5|1.1.1|3.0 [CACHE_DIR]" >&2; exit 2 ;;
esac
CACHE_DIR="${2:-$REPO_ROOT/.cache/openssl-$SERIES}"
mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd)"
APT_DIR="$(dirname "$CACHE_DIR")/apt"
SRC_DIR="$CACHE_DIR/src"
STAMP="$CACHE_DIR/stamp"
JOBS="${TLSPROF_BUILD_JOBS:-2}"

# Debian's OPENSSLDIR, so the build finds the system CA directory (and openssl.cnf).
CONFIGURE_ARGS=(shared no-tests --openssldir=/usr/lib/ssl --libdir=lib)
CONFIGURED="series=$SERIES out-of-tree configure=${CONFIGURE_ARGS[*]}"
RECIPE="recipe=2 $CONFIGURED no-Bsymbolic target=build_libs ${EXTRA_TARGETS[*]}"

log() { echo "build-openssl $SERIES: $*" >&2; }
elapsed() { log "elapsed $(( $(date +%s) - START ))s"; }

up_to_date() {
  [ -f "$CACHE_DIR/lib/libssl.so.$SONAME" ] && [ -f "$CACHE_DIR/lib/libcrypto.so.$SONAME" ] &&
    [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$RECIPE" ]
}

if up_to_date; then log "up to date in $CACHE_DIR ($(sed -n 2p "$STAMP"))"; exit 0; fi

# One builder at a time per cache dir (parallel test sessions share it).
exec 9>"$CACHE_DIR/.lock"
flock -w 3600 9 || { log "timed out waiting for $CACHE_DIR/.lock"; exit 1; }
if up_to_date; then log "built by another process in $CACHE_DIR"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in gcc libc6-dev make perl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "missing build dependencies: ${missing[*]} (make deps installs them)"; exit 1
fi

# --- orig tarball, through a private apt configuration ------------------------------------------
find_tarball() {
  ls -1 "$SRC_DIR"/openssl_"$SERIES".*.orig.tar.* "$SRC_DIR"/openssl_"$SERIES"[a-z].orig.tar.* 2>/dev/null |
    grep -v '\.asc$' | sort -V | tail -n1
}
mkdir -p "$SRC_DIR"
TARBALL="$(find_tarball || true)"
if [ -z "$TARBALL" ]; then
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  exec 8>"$APT_DIR/.lock"
  flock -w 600 8 || { log "timed out waiting for $APT_DIR/.lock"; exit 1; }
  cat >"$APT_DIR/sources.list" <<'EOF'
# Written by tlsprof scripts/build-openssl.sh: source packages only, read by its own apt-get calls.
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security trixie-security main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
EOF
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
            -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
            -o "APT::Sandbox::User=$(id -un)")
  if ! ls "$APT_DIR"/lists/*_Sources* >/dev/null 2>&1 || [ -n "$(find "$APT_DIR/lists" -maxdepth 1 -name '*Sources*' -mmin +1440)" ]; then
    log "apt-get update (private sources: $APT_DIR/sources.list)"
    apt-get "${APT_OPTS[@]}" update -qq </dev/null >"$SRC_DIR/apt-update.log" 2>&1 || {
      tail -n 20 "$SRC_DIR/apt-update.log" >&2; exit 1; }
  fi
  # The newest version of the series whose orig tarball the mirror has (seen here: 3.5.9 listed but
  # 404, 3.5.7 fetched). apt-get may fetch the orig tarball and then 404 on the .dsc of the security
  # archive and exit non-zero; the orig tarball is all the build needs.
  for v in $(apt-cache "${APT_OPTS[@]}" showsrc openssl | sed -n 's/^Version: //p' |
             grep "^$SERIES" | sort -rV | uniq); do
    log "fetching the orig tarball of openssl $v"
    (cd "$SRC_DIR" && apt-get "${APT_OPTS[@]}" source --download-only -qq "openssl=$v" </dev/null \
       >>"$SRC_DIR/apt-source.log" 2>&1) || true
    TARBALL="$(find_tarball || true)"
    [ -n "$TARBALL" ] && break
  done
  exec 8>&-
  [ -n "$TARBALL" ] || { log "no openssl $SERIES orig tarball; apt-get said:"; tail -n 20 "$SRC_DIR/apt-source.log" >&2; exit 1; }
  rm -f "$SRC_DIR"/openssl_*.debian.tar.* "$SRC_DIR"/openssl_*.dsc
fi
VERSION="$(basename "$TARBALL" | sed -E 's/^openssl_([0-9.]+[a-z]?)\.orig\.tar\..*/\1/')"
log "source: $(basename "$TARBALL") (OpenSSL $VERSION, Debian $SUITE)"

# --- configure and build, out of tree ------------------------------------------------------------
# ../config guesses the target (1.1.1's Configure insists on one; 3.x accepts both).
TREE="$SRC_DIR/openssl-$VERSION"
BUILD_DIR="$TREE/build_shared"
if [ ! -f "$BUILD_DIR/.configured" ] || [ "$(cat "$BUILD_DIR/.configured")" != "$CONFIGURED" ]; then
  rm -rf "$TREE"
  mkdir -p "$BUILD_DIR"
  tar -xf "$TARBALL" -C "$TREE" --strip-components=1
  (cd "$BUILD_DIR" && ../config "${CONFIGURE_ARGS[@]}" >"$BUILD_DIR/configure.log" 2>&1) || {
    tail -n 30 "$BUILD_DIR/configure.log" >&2; exit 1; }
  echo "$CONFIGURED" >"$BUILD_DIR/.configured"
fi
# Upstream links the libraries -Bsymbolic; Debian (no-symbolic) and other distributions do not, so
# their libcrypto calls CRYPTO_malloc through its own PLT as the system 3.0 does. Build like them
# (tlsprof's -Bsymbolic path is covered by the zlib build). Idempotent; relinks when it changed.
if grep -q -- '-Wl,-Bsymbolic' "$BUILD_DIR/Makefile"; then
  sed -i -e 's/ -Wl,-Bsymbolic / /g' -e 's/ -Wl,-Bsymbolic$//' "$BUILD_DIR/Makefile"
  rm -f "$BUILD_DIR"/lib*.so* "$BUILD_DIR/apps/openssl"
fi
# The version scripts first, alone: 1.1.1's Makefile can link libcrypto while -j2 still writes
# libcrypto.map ("syntax error in VERSION script").
: >"$BUILD_DIR/make.log"
if [ ${#MAPS[@]} -gt 0 ]; then
  (cd "$BUILD_DIR" && make "${MAPS[@]}" >"$BUILD_DIR/make.log" 2>&1) || {
    tail -n 20 "$BUILD_DIR/make.log" >&2; exit 1; }
fi
log "make -j$JOBS build_libs ${EXTRA_TARGETS[*]} in $BUILD_DIR (nice; takes minutes)"
(cd "$BUILD_DIR" && nice -n 10 make -j"$JOBS" build_libs "${EXTRA_TARGETS[@]}" >>"$BUILD_DIR/make.log" 2>&1) || {
  tail -n 40 "$BUILD_DIR/make.log" >&2; exit 1; }
if LC_ALL=C readelf -d "$BUILD_DIR/libcrypto.so.$SONAME" | grep -q SYMBOLIC; then
  log "libcrypto.so.$SONAME is still linked -Bsymbolic"; exit 1
fi

# --- install into the cache (stamp last) ---------------------------------------------------------
rm -f "$STAMP"
rm -rf "$CACHE_DIR/lib" "$CACHE_DIR/include" "$CACHE_DIR/bin"
mkdir -p "$CACHE_DIR/lib" "$CACHE_DIR/include/openssl" "$CACHE_DIR/bin"
for lib in libcrypto libssl; do
  cp "$BUILD_DIR/$lib.so.$SONAME" "$CACHE_DIR/lib/"
  ln -sf "$lib.so.$SONAME" "$CACHE_DIR/lib/$lib.so"  # for -lssl -lcrypto
done
cp "$TREE"/include/openssl/*.h "$CACHE_DIR/include/openssl/"
cp "$BUILD_DIR"/include/openssl/*.h "$CACHE_DIR/include/openssl/"  # generated: opensslconf.h, ...
if [ -x "$BUILD_DIR/apps/openssl" ]; then cp "$BUILD_DIR/apps/openssl" "$CACHE_DIR/bin/"; fi
printf '%s\nopenssl %s\n' "$RECIPE" "$VERSION" >"$STAMP"
rm -rf "$TREE"  # large; the tarball stays, so a rebuild needs no network
log "installed into $CACHE_DIR (OpenSSL $VERSION)"
elapsed
