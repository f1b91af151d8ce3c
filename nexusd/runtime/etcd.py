"""An aetcd client from the shared settings: first endpoint, optional TLS and user/password.

aetcd (asyncio fork of python-etcd3) opens an insecure gRPC channel; for TLS we open a secure
one in its place. Not `etcd3`: 0.12 fails to import with protobuf >= 4 and is sync-only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aetcd
import grpc

from nexusd.runtime.settings import SharedSettings


class _Client(aetcd.Client):
    def __init__(self, *args, credentials: grpc.ChannelCredentials | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._credentials is None:
            return await super().connect()
        real = aetcd.rpc.insecure_channel
        creds = self._credentials
        try:  # aetcd builds its stubs inside connect(); swap the channel factory for that call
            aetcd.rpc.insecure_channel = lambda target, options=None: aetcd.rpc.secure_channel(
                target, creds, options=options
            )
            return await super().connect()
        finally:
            aetcd.rpc.insecure_channel = real


def etcd_client(shared: SharedSettings, endpoint: str | None = None, timeout: int = 5) -> aetcd.Client:
    url = urlsplit(endpoint or shared.etcd_endpoint_list[0])
    credentials = None
    if url.scheme == "https" or shared.etcd_ca:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(shared.etcd_ca),
            private_key=read(shared.etcd_key),
            certificate_chain=read(shared.etcd_cert),
        )
    return _Client(
        host=url.hostname or "127.0.0.1",
        port=url.port or 2379,
        username=shared.etcd_user or None,
        password=shared.etcd_password or None,
        timeout=timeout,
        credentials=credentials,
    )


async def close_quietly(client: Any) -> None:
    """Close a client whose channel may already be broken (etcd restarted); never raises."""
    if client is not None:
        try:
            await asyncio.wait_for(client.close(), 2)
        except Exception:  # noqa: BLE001 - a broken channel may fail to close; drop it
            pass
