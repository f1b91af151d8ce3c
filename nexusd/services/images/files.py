"""Images kept for `response_format=url`: written to the cache directory, served at
`GET /v1/images/files/{id}` for a TTL, then deleted.

File id: `<instance_id>.<token>.<ext>`, e.g. `images-gpu1-3f9c0a1b.Qm9vX2Jhcl9iYXpfcXV4XzEyMzQ.png`.
The instance id (no dots in it) lets the gateway route the fetch back to the instance that made
the image; the token is 128 random bits (URL-safe base64), so the URL is a capability: whoever
holds it may fetch the image without a key, as with OpenAI's image URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from pathlib import Path

log = logging.getLogger("nexusd.images.files")

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
TOKEN_BYTES = 16  # 128 bits
_ID = re.compile(r"^([A-Za-z0-9_-]{1,200})\.([A-Za-z0-9_-]{22,64})\.(png|jpeg|webp)$")


def instance_of(file_id: str) -> str | None:
    """The instance id inside a file id (what the gateway routes on), or None if malformed."""
    m = _ID.match(file_id)
    return m.group(1) if m else None


class FileStore:
    def __init__(self, directory: Path, instance_id: str, ttl: float) -> None:
        if "." in instance_id:
            raise ValueError("an instance id must not contain '.' (it separates the file id's parts)")
        self.directory = directory
        self.instance_id = instance_id
        self.ttl = ttl

    def open(self) -> None:
        # 0700: the files are capabilities; nobody else on the host should list them.
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sweep()

    def put(self, data: bytes, ext: str) -> str:
        file_id = f"{self.instance_id}.{secrets.token_urlsafe(TOKEN_BYTES)}.{ext}"
        final = self.directory / file_id
        tmp = final.with_name(f".{file_id}.tmp")
        # Write then rename: a fetch never sees half a file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
        return file_id

    def get(self, file_id: str) -> tuple[Path, str] | None:
        """(path, content type) of a live file of this instance, else None."""
        m = _ID.match(file_id)
        if m is None or m.group(1) != self.instance_id:
            return None
        path = self.directory / file_id
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        if age > self.ttl:
            path.unlink(missing_ok=True)
            return None
        return path, CONTENT_TYPES[m.group(3)]

    def sweep(self) -> int:
        """Delete every expired file (any instance's: earlier runs' files are unreachable)."""
        now = time.time()
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                try:
                    if entry.is_file() and now - entry.stat().st_mtime > self.ttl:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        if removed:
            log.info("deleted %d expired image file(s)", removed)
        return removed

    async def sweep_forever(self) -> None:
        interval = max(0.2, min(60.0, self.ttl / 4))
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.sweep)
