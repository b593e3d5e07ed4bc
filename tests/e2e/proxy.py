"""A round-robin HTTP proxy on loopback: each request goes to the next upstream in turn, as a load balancer
without sticky sessions would send it."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Dict, Iterator, List

import aiohttp
from aiohttp import web

from tests.console.conftest import serve

HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


def round_robin_app(upstreams: List[str]) -> web.Application:
    turn = itertools.cycle(upstreams)
    served: Dict[str, int] = {upstream: 0 for upstream in upstreams}

    async def forward(request: web.Request) -> web.Response:
        upstream = next(turn)
        served[upstream] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http, http.request(
            request.method, upstream + request.rel_url.path_qs, headers=headers, data=body, allow_redirects=False
        ) as answer:
            content = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
            return web.Response(status=answer.status, body=content, headers=kept)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app["served"] = served
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


@contextmanager
def round_robin(upstreams: List[str]) -> Iterator[tuple]:
    """Yield (url, served-count per upstream)."""
    app = round_robin_app(upstreams)
    with serve(app) as url:
        yield url, app["served"]
