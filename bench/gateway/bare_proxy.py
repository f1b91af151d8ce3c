"""The baseline: a bare aiohttp + uvloop reverse proxy, no auth, routing, metrics or
logs. Non-streaming answers are read whole; SSE is relayed chunk by chunk.

    python bench/gateway/bare_proxy.py PORT UPSTREAM_URL
"""

import sys

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = sys.argv[2].rstrip("/")
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def session_ctx(app: web.Application):
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False,
                                     connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30))
    yield
    await app[SESSION].close()


async def proxy(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].request(request.method, UPSTREAM + request.raw_path,
                                        data=body, headers=headers) as up:
        if up.content_type != "text/event-stream":
            return web.Response(body=await up.read(), status=up.status,
                                headers={"Content-Type": up.headers.get("Content-Type", "")})
        out = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        async for chunk in up.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_route("*", "/{tail:.*}", proxy)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
