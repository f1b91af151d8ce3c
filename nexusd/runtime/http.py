"""One shared ClientSession factory for services that call others: pooled connections, bounded
timeouts, and X-Request-ID (and the internal token) forwarded on every call."""

from __future__ import annotations

import aiohttp

from nexusd.runtime.logs import request_id_var


async def _forward_request_id(session, ctx, params: aiohttp.TraceRequestStartParams) -> None:
    rid = request_id_var.get()
    if rid and "X-Request-ID" not in params.headers:
        params.headers["X-Request-ID"] = rid


def client_session(
    *,
    limit: int = 256,
    limit_per_host: int = 64,
    connect_timeout: float = 5.0,
    total_timeout: float | None = 300.0,
    internal_token: str = "",
    auto_decompress: bool = True,
) -> aiohttp.ClientSession:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_forward_request_id)
    headers = {"X-Nexus-Internal-Token": internal_token} if internal_token else {}
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout),
        trace_configs=[trace],
        headers=headers,
        auto_decompress=auto_decompress,
    )
