"""The sandbox's kube-proxy: each Service port listens on `clusterIP:port` and forwards every HTTP
request to one Ready endpoint, round-robin.

Routing is per request (not per connection), so a client's keep-alive connection never sticks to a
pod that is going away. There are no retries: a request that reaches a pod which then dies fails,
as on a cluster; zero-downtime rollouts have to come from readiness and a graceful drain. The
in-flight count per pod IP lets the pod's shutdown wait for requests it is still answering. A
Service without Ready endpoints answers `503` with a message naming the Service.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import Callable

import aiohttp
from aiohttp import web

log = logging.getLogger("sandbox.proxy")

# Headers that belong to one hop, not to the request (RFC 9110 section 7.6.1), plus what aiohttp recomputes.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                "transfer-encoding", "upgrade", "host", "content-length"}

Endpoints = Callable[[], list[tuple[str, int]]]  # the Ready (ip, port) pairs behind one Service port


class ServicePort:
    """One listening Service port; `endpoints()` is asked anew for every request."""

    def __init__(self, name: str, address: str, port: int, endpoints: Endpoints,
                 inflight: collections.Counter, session: aiohttp.ClientSession):
        self.name, self.address, self.port = name, address, port
        self.endpoints, self.inflight, self.session = endpoints, inflight, session
        self.turn = itertools.count()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.address, self.port, reuse_address=True).start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        endpoints = self.endpoints()
        if not endpoints:
            return web.Response(status=503, text=f"service {self.name} has no ready endpoints\n")
        ip, port = endpoints[next(self.turn) % len(endpoints)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        self.inflight[ip] += 1
        try:
            async with self.session.request(request.method, f"http://{ip}:{port}{request.rel_url}",
                                            headers=headers, data=body or None, allow_redirects=False) as upstream:
                payload = await upstream.read()
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
                               and k.lower() != "content-encoding"}
                if "Content-Encoding" in upstream.headers:
                    out_headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
                return web.Response(status=upstream.status, headers=out_headers, body=payload)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.info("service %s: endpoint %s:%s failed: %s", self.name, ip, port, exc)
            return web.Response(status=502, text=f"service {self.name}: endpoint {ip}:{port} failed: {exc}\n")
        finally:
            self.inflight[ip] -= 1


def proxy_session() -> aiohttp.ClientSession:
    """The upstream client: a fresh connection per request (a pooled one may point at a dead pod),
    bodies passed through undecoded."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
