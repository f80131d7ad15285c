"""Request intake for SandboxAPI: parse what real clients send, give kmock reactions the first say.

kmock's own intake crashes on protobuf bodies (it decodes every body as text) and on
`/api/v1/namespaces`, and renders handler results through its reaction machinery, which cannot set
a per-request status code. This mixin replaces kmock's `__call__`/`_handle` for the emulator.
"""
from __future__ import annotations

import collections
import json
import logging
import math
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import enums, references, rendering

from sandbox import apierrors, protobuf
from sandbox.paths import parse_api_path

log = logging.getLogger("sandbox.api")
MAX_REMEMBERED_REQUESTS = 1000
REQUEST_COUNTS_PATH = "/debug/requests"


def request_kind(method: str, action: Any, path: Any, raw_path: str) -> tuple[str, str]:
    """(verb, resource) as an apiserver's audit log names them: `list pods`, `patch
    selfhealingmodels/status`, `get discovery` for everything outside resource paths."""
    if path is None or path.plural is None:
        return method.lower(), "discovery" if raw_path.startswith(("/api", "/openapi", "/version")) else raw_path
    verb = {enums.action.WATCH: "watch", enums.action.FETCH: "get", enums.action.LIST: "list",
            enums.action.CREATE: "create"}.get(action)
    if verb is None:
        verb = {"PUT": "update", "PATCH": "patch"}.get(method) or (
            "delete" if path.name else "deletecollection" if method == "DELETE" else method.lower())
    return verb, path.plural + (f"/{path.subresource}" if path.subresource else "")


def client_of(user_agent: str) -> str:
    """The client's product name (`kopf`, `kubectl`, `OpenAPI-Generator`, `Python` for aiohttp)."""
    return (user_agent.split("/", 1)[0].strip() or "unknown")[:40] if user_agent else "unknown"


class RequestIntakeMixin:
    """Must come before kmock's classes in the bases; the subclass provides `_serve(request)`."""

    _requests: list[rendering.Request]
    _payloads: list[Any]
    _request_count: int
    # (client, verb, resource) -> requests served since start: what load each client puts on the API
    # (`GET /debug/requests`; benchmarks read it, e.g. bench/scale.py).
    request_counts: collections.Counter

    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raise NotImplementedError

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.path == REQUEST_COUNTS_PATH and raw.method == "GET":
            return aiohttp.web.json_response({"counts": [
                {"client": client, "verb": verb, "resource": resource, "count": count}
                for (client, verb, resource), count in sorted(self.request_counts.items())]})
        try:
            request = await self._parse(raw)
            self._requests.append(request)
            if len(self._requests) > MAX_REMEMBERED_REQUESTS:  # a long-lived server must not grow forever
                del self._requests[:len(self._requests) - MAX_REMEMBERED_REQUESTS]
            return await self._handle(request)
        except rendering.StreamingError as exc:  # a watch failed after its headers went out
            log.warning("stream failed: %r", exc.__cause__)
            return exc.args[0]
        except kmock.KubernetesError as exc:
            status = exc.to_status() if isinstance(exc, apierrors.ApiError) else apierrors.ApiError(
                exc.status, exc.reason or "NotFound", exc.message or "").to_status()
            return aiohttp.web.json_response(status, status=exc.status)
        except Exception as exc:  # a bug here must reach the client as a Status, not a dropped connection
            log.exception("internal error on %s %s", raw.method, raw.path)
            return aiohttp.web.json_response(
                apierrors.ApiError(500, "InternalError", f"sandbox API internal error: {exc!r}").to_status(),
                status=500)

    async def _parse(self, raw: aiohttp.web.BaseRequest) -> rendering.Request:
        body = await raw.read()
        content_type = raw.content_type or ""
        data: Any = None
        if body:
            if content_type == protobuf.CONTENT_TYPE:
                data = protobuf.decode_body(body)
            elif content_type == "application/apply-patch+yaml":
                try:
                    data = yaml.safe_load(body)
                except yaml.YAMLError as exc:
                    raise apierrors.bad_request(f"the apply patch is not valid YAML: {exc}") from exc
            elif content_type.endswith("json") or not content_type:
                try:
                    data = json.loads(body)
                except ValueError as exc:
                    raise apierrors.bad_request(f"the request body is not valid JSON: {exc}") from exc
            else:
                raise apierrors.unsupported_media_type(content_type, "send application/json")
        path = parse_api_path(raw.path)
        method = enums.method(raw.method)
        action = None
        if path is not None and path.plural is not None:
            action = (enums.action.WATCH if method == enums.method.GET and raw.query.get("watch") in ("true", "1")
                      else enums.action.FETCH if method == enums.method.GET and path.name
                      else enums.action.LIST if method == enums.method.GET
                      else enums.action.CREATE if method == enums.method.POST
                      else enums.action.UPDATE if method in (enums.method.PATCH, enums.method.PUT)
                      else enums.action.DELETE if method == enums.method.DELETE else None)
        self._request_count += 1
        self.request_counts[(client_of(raw.headers.get("User-Agent", "")),
                             *request_kind(raw.method, action, path, raw.path))] += 1
        return rendering.Request(
            id=self._request_count, raw_request=raw, url=raw.url, method=raw.method,
            params=dict(raw.query), headers=dict(raw.headers), cookies=dict(raw.cookies),
            body=body, text=body.decode("utf-8", errors="replace"), data=data, action=action,
            resource=None if path is None else references.resource(path.group, path.version, path.plural),
            namespace=None if path is None else path.namespace, name=None if path is None else path.name,
            subresource=None if path is None else path.subresource)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # User-declared kmock reactions first (fault injection in tests), then the emulated API.
        payloads = [p for p in self._payloads if not any(x == -math.inf for x in p.priorities)]
        payloads.sort(key=lambda p: tuple(-x for x in p.priorities))
        for payload in payloads:
            if request in payload._source and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        return await self._serve(request)
