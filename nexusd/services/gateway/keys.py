"""API keys: the key format, the keys file, and the lookup on the hot path.

A key is `nx-<id>-<secret>`: `id` is 12 hex characters (public, used for lookup and in metrics),
`secret` is 32 random bytes in URL-safe base64. The file keeps only SHA-256 of the secret: the
secret has full entropy, so a fast hash is enough (bcrypt/argon2 exist to slow down guessing of
low-entropy passwords and would cost milliseconds per request here).

The file is JSON lines, one key per line (`#` comments and blank lines allowed):

    {"id": "3f9c0a1b2c3d", "sha256": "<hex>", "name": "alice", "operations": ["chat.completions"],
     "models": ["llama3"], "rpm": 60, "expires": "2026-01-01T00:00:00+00:00"}

`operations`, `models`, `rpm`, `tpm`, `max_concurrent`, `budget` ("N/day" or "N/month") and `expires`
are optional (absent or null = unrestricted).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexusd.services.gateway.budget import format_budget, parse_budget

PREFIX = "nx"
ID_HEX = 12


class KeyFileError(ValueError):
    """The keys file cannot be read or parsed; the message names the line."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    sha256: str
    name: str
    operations: frozenset[str] | None = None
    models: frozenset[str] | None = None
    rpm: int | None = None
    expires: float | None = None  # epoch seconds
    tpm: int | None = None  # tokens per minute, summed over every gateway (quotas.py)
    max_concurrent: int | None = None  # requests in flight, summed over every gateway (quotas.py)
    budget: tuple[int, str] | None = None  # tokens per UTC day or month, every gateway (budget.py)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "sha256": self.sha256, "name": self.name}
        if self.operations is not None:
            doc["operations"] = sorted(self.operations)
        if self.models is not None:
            doc["models"] = sorted(self.models)
        if self.rpm is not None:
            doc["rpm"] = self.rpm
        if self.tpm is not None:
            doc["tpm"] = self.tpm
        if self.max_concurrent is not None:
            doc["max_concurrent"] = self.max_concurrent
        if self.budget is not None:
            doc["budget"] = format_budget(self.budget)
        if self.expires is not None:
            doc["expires"] = datetime.fromtimestamp(self.expires, UTC).isoformat()
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ApiKey:
        ops, models, expires = doc.get("operations"), doc.get("models"), doc.get("expires")
        key = cls(
            id=str(doc["id"]), sha256=str(doc["sha256"]).lower(), name=str(doc["name"]),
            operations=frozenset(ops) if ops is not None else None,
            models=frozenset(models) if models is not None else None,
            rpm=int(doc["rpm"]) if doc.get("rpm") is not None else None,
            expires=parse_expiry(expires) if expires is not None else None,
            tpm=int(doc["tpm"]) if doc.get("tpm") is not None else None,
            max_concurrent=int(doc["max_concurrent"]) if doc.get("max_concurrent") is not None else None,
            budget=parse_budget(doc["budget"]) if doc.get("budget") is not None else None,
        )
        if len(key.sha256) != 64 or any(c not in "0123456789abcdef" for c in key.sha256):
            raise ValueError("sha256 must be 64 hex characters")
        for limit in ("rpm", "tpm", "max_concurrent"):
            value = getattr(key, limit)
            if value is not None and value < 1:
                raise ValueError(f"{limit} must be >= 1")
        return key

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(name: str, **scope: Any) -> tuple[str, ApiKey]:
    """A fresh key: the plaintext (shown once) and the record to store."""
    key_id = secrets.token_hex(ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    return f"{PREFIX}-{key_id}-{secret}", ApiKey(id=key_id, sha256=hash_secret(secret), name=name, **scope)


def parse_expiry(value: str | float | int) -> float:
    """An ISO date/datetime (UTC unless it says otherwise), epoch seconds, or a duration
    from now such as `30d`, `12h`, `90m`."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if text[-1:] in units and text[:-1].isdigit():
        return time.time() + int(text[:-1]) * units[text[-1]]
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def split_key(presented: str) -> tuple[str, str] | None:
    """`nx-<id>-<secret>` → (id, secret); None when it is not of that shape."""
    parts = presented.split("-", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != ID_HEX or not parts[2]:
        return None
    return parts[1], parts[2]


def read_keys(path: Path) -> dict[str, ApiKey]:
    keys: dict[str, ApiKey] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return keys
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = ApiKey.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            # Never echo the line: it is a hash, but keep key material out of logs anyway.
            raise KeyFileError(f"{path} line {number}: {type(exc).__name__}: {exc}") from None
        if key.id in keys:
            raise KeyFileError(f"{path} line {number}: duplicate key id")
        keys[key.id] = key
    return keys


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the keys file's writer lock (`<name>.lock` beside it) for a read-modify-write.

    The lock is a separate file because the keys file itself is replaced (os.replace), so a
    lock on it would be on an inode that is gone after the first writer. Readers (the
    gateway's reload) need no lock: they see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Atomically replace the file (same directory), so a reload never sees half.

    A new file is 0600. An existing one keeps its mode, owner and group: packaging makes
    /etc/nexus/api-keys 0640 root:nexus (tmpfiles.d) so the gateway's unprivileged user can read
    it, and `nexusd keys add` run as root must not take that away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.stat(path)
        mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o600, None
    fd, tmp = tempfile.mkstemp(prefix=".api-keys.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("# nexusd API keys: one JSON object per line, secrets stored as SHA-256 only\n")
            for key in keys:
                f.write(json.dumps(key.to_json(), separators=(",", ":")) + "\n")
        if owner is not None and hasattr(os, "chown"):
            with contextlib.suppress(PermissionError):  # not root: the file stays ours
                os.chown(tmp, *owner)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class KeyStore:
    """The loaded keys; `reload()` swaps the whole dict at once (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, ApiKey] = {}
        # Authorization header -> key, for headers already verified against this set of keys:
        # a client sends the same header on every request, so the hash runs once per key.
        self._verified: dict[str, ApiKey] = {}

    def reload(self) -> int:
        keys = read_keys(self.path)
        self.keys, self._verified = keys, {}
        return len(keys)

    def is_verified(self, authorization: str | None) -> bool:
        """Whether this exact header already matched a key (no hashing needed for it)."""
        return authorization is not None and authorization in self._verified

    def authenticate(self, authorization: str | None, now: float) -> tuple[ApiKey | None, str]:
        """The key for an `Authorization` header, or (None, why) — why is safe to show."""
        key = self._verified.get(authorization) if authorization else None
        if key is not None:
            return (None, "API key expired") if key.expired(now) else (key, "")
        if not authorization or authorization[:7].lower() != "bearer ":
            return None, "Missing API key: send 'Authorization: Bearer <key>'"
        parts = split_key(authorization[7:].strip())
        if parts is None:
            return None, "Invalid API key"
        key = self.keys.get(parts[0])
        # The id is public; the secret is compared in constant time.
        if key is None or not hmac.compare_digest(key.sha256, hash_secret(parts[1])):
            return None, "Invalid API key"
        if key.expired(now):
            return None, "API key expired"
        if len(self._verified) < 4096:  # bounded: only headers that matched a real key get here
            self._verified[authorization] = key
        return key, ""
