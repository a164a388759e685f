"""The OpenSSL versions tlsprof has been checked against, and what a report on another one can trust.

Owners (contexts, connections), their counts and their bytes come from hooked entry points that every
OpenSSL since 1.1.0 has; the split of those bytes by cause is read from OpenSSL's source paths
(hooks/causes.c), which move between versions. A version outside CHECKED gets one line saying so
(report notes, and a stderr line from `run` and `attach`); nothing else changes.
"""

import re

# series -> what was measured on it (docs/compatibility.md, "Versions"; tests/integration/test_openssl_versions.py)
CHECKED = {
    "1.1.1": "C server and openssl s_server built against Debian 11's 1.1.1w",
    "3.0": "the system OpenSSL of Debian 12 (3.0.x), with and without zlib",
    "3.5": "Debian 13's 3.5.x under the seed's asyncio server",
}

_VERSION = re.compile(r"^OpenSSL (\d+)\.(\d+)\.(\d+)([a-z]*)\b")


def series_of(version_text):
    """'OpenSSL 3.5.7 1 Jul 2025' -> '3.5'; 'OpenSSL 1.1.1w  11 Sep 2023' -> '1.1.1'; else None
    (LibreSSL, BoringSSL, no version known)."""
    m = _VERSION.match(version_text or "")
    if not m:
        return None
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return f"{major}.{minor}.{patch}" if major < 3 else f"{major}.{minor}"


def unchecked_version_note(version_text):
    """One sentence for a version tlsprof has not been checked against, or None (checked, or no
    OpenSSL version reported at all)."""
    if not version_text:
        return None
    if series_of(version_text) in CHECKED:
        return None
    name = " ".join(version_text.split()[:2])
    return (
        f"{name} is not a version tlsprof has been checked against ({', '.join(CHECKED)}): "
        "contexts, connections and their bytes are measured as on any version and can be "
        "trusted; the split by cause is read from OpenSSL's source paths, which move between "
        "versions, so some bytes may show as `other` or under a neighbouring cause"
    )
