"""The ceiling: the least an aiohttp server can do for chatd's POST message, run as its own process.

``python -m bench.ceiling --port P`` serves ``POST /applications/{token}/chats/{chat}/messages``:
it reads and parses the JSON body, takes the next number of that chat from a dict and answers
201 ``{"number": n}`` with a ``Location`` header, as chatd does. Same framework, same event loop
(uvloop, installed as ``chatd serve`` installs it), same JSON library (orjson), same response
shape and about the same size, and nothing else: no backend, no validation beyond reading the
body. Whatever chatd's rate is below this one is chatd's own work (and its backends'); whatever
the two share (HTTP parsing, the event loop, the load client on the same cores) cancels out in
the ratio.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import orjson
from aiohttp import web

ROUTE = "/applications/{token}/chats/{chat}/messages"


def create_app() -> web.Application:
    numbers: defaultdict[tuple[str, str], int] = defaultdict(int)

    async def create_message(request: web.Request) -> web.Response:
        token, chat = request.match_info["token"], request.match_info["chat"]
        try:
            content = orjson.loads(await request.read())["content"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.Response(status=400)
        if not isinstance(content, str):
            return web.Response(status=422)
        numbers[token, chat] += 1
        number = numbers[token, chat]
        return web.Response(
            body=orjson.dumps({"number": number}),
            status=201,
            content_type="application/json",
            headers={"Location": f"/applications/{token}/chats/{chat}/messages/{number}"},
        )

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_post(ROUTE, create_message)
    # The same readiness path as chatd, so one start-up helper serves both.
    app.router.add_get("/readyz", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="trivial aiohttp POST-message server (the benchmark's ceiling)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # as in chatd.cli.serve: uvloop is optional
        pass
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
