"""TLS for a service's API listener and for the gateway's calls to backends.

Server side: `NEXUS_<SERVICE>_TLS_CERT` / `_TLS_KEY` (PEM; a relative name is looked up in
$CREDENTIALS_DIRECTORY, where systemd's LoadCredential= puts them). Client side (the gateway):
`NEXUS_BACKEND_CA` is the CA bundle https:// backends are verified against; unset, the system's
CAs are used. Either way certificates are verified: the internal token never goes to a peer that
could not prove its name."""

from __future__ import annotations

import ssl

from nexusd.runtime.settings import ConfigError


def server_context(cert: str, key: str, setting: str) -> ssl.SSLContext | None:
    """HTTPS for a listener, or None (plain HTTP) when no certificate is configured."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{setting}_TLS_CERT/_KEY: cannot load: {exc}") from None
    return ctx


def client_context(ca: str) -> ssl.SSLContext:
    """How the gateway verifies https:// backends."""
    try:
        return ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"NEXUS_BACKEND_CA: cannot load {ca}: {exc}") from None
