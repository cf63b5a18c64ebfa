"""aiohttp (Debian's python3-aiohttp) unchanged on both loops: its server (web.Application
over loop.create_server) and its client (ClientSession over loop.create_connection), with
keep-alive, a streamed body both ways, a JSON round trip and a 404."""

import asyncio

import pytest

from net_support import run

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


def make_app():
    async def hello(request):
        return web.Response(text="Hello, World!")

    async def echo_json(request):
        body = await request.json()
        return web.json_response({"got": body, "method": request.method})

    async def upload(request):
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
        return web.json_response({"size": size})

    async def download(request):
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        for _ in range(32):
            await resp.write(b"x" * 32768)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/json", echo_json)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    return app


def test_aiohttp_server_and_client(loop):
    async def body():
        runner = web.AppRunner(make_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(20):  # keep-alive: one connection, many requests
                    async with session.get(base + "/") as r:
                        assert r.status == 200
                        assert await r.text() == "Hello, World!"
                async with session.post(base + "/json", json={"a": [1, 2, 3]}) as r:
                    assert await r.json() == {"got": {"a": [1, 2, 3]}, "method": "POST"}

                async def chunks():
                    for _ in range(64):
                        yield b"y" * 16384

                async with session.post(base + "/upload", data=chunks()) as r:
                    assert (await r.json())["size"] == 64 * 16384
                async with session.get(base + "/download") as r:
                    assert len(await r.read()) == 32 * 32768
                async with session.get(base + "/missing") as r:
                    assert r.status == 404
                results = await asyncio.gather(*(session.get(base + "/") for _ in range(10)))
                for r in results:
                    assert (await r.text()) == "Hello, World!"
                    r.release()
        finally:
            await runner.cleanup()

    run(loop, body(), timeout=15)
