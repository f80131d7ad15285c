"""Fake pods for scale tests: hundreds of Deployment pods without hundreds of processes.

Only used when asked for (`python -m sandbox up --fake-pods MODULE:FACTORY`, or
`SandboxProcess(workdir, fake_pods=...)`); the default kubelet runs every pod as a real process.
Everything else stays real: Deployments, ReplicaSets, Pod objects, loopback pod IPs, ConfigMap
volumes, Service proxies, readiness, graceful deletion. What differs is the container:

- one aiohttp server in the kubelet process listens on every fake pod's IP and declared container
  ports (a few sockets per pod, no process, no interpreter start-up);
- what a pod answers is up to an *app*: `FACTORY(workdir)` returns an object with
  `handle(pod: FakePod, port: str, method: str, path: str, query: Mapping[str, str]) -> (status, body)`
  where `port` is the container port's name and `body` is JSON-serialisable (or `str`);
- the readiness probe (`httpGet` path and port of the container spec) asks the app in process
  instead of over a socket, since hundreds of pods probing every 2 s would mostly measure the probes.

`sandbox.fakepods:healthy` is a trivial app that answers 200 to everything.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import aiohttp
from aiohttp import web

from sandbox.deployments import DeploymentKubelet
from sandbox.pods import PodProcess, PodSpecError, _resolve_port, now

log = logging.getLogger("sandbox.fakepods")


class FakePodApp(Protocol):
    def handle(self, pod: "FakePod", port: str, method: str, path: str,
               query: Mapping[str, str]) -> tuple[int, Any]: ...


class Healthy:
    """Answers 200 `{"status": "Healthy"}` to every request (TorchServe's /ping answer)."""

    def handle(self, pod, port, method, path, query):
        return 200, {"status": "Healthy"}


def healthy(workdir: Path) -> FakePodApp:
    return Healthy()


def load_app(spec: str, workdir: Path) -> FakePodApp:
    """`module:factory` -> factory(workdir)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"--fake-pods wants MODULE:FACTORY, got {spec!r}")
    return getattr(importlib.import_module(module), attr)(Path(workdir))


class FakePodServer:
    """One HTTP server for all fake pods: a site per (pod IP, container port)."""

    def __init__(self, app: FakePodApp):
        self.app = app
        self.by_address: dict[tuple[str, int], tuple["FakePod", str]] = {}
        self.sites: dict[str, list[web.TCPSite]] = {}   # pod uid -> its listeners
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        server = web.Application()
        server.router.add_route("*", "/{tail:.*}", self._serve)
        self.runner = web.AppRunner(server, access_log=None, handle_signals=False)
        await self.runner.setup()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def bind(self, pod: "FakePod") -> None:
        sites = []
        try:
            for name, number in pod.ports.items():
                site = web.TCPSite(self.runner, pod.ip, number, reuse_address=True)
                await site.start()
                sites.append(site)
                self.by_address[(pod.ip, number)] = (pod, name)
        except OSError:
            for site in sites:
                await site.stop()
            raise
        self.sites[pod.uid] = sites

    async def unbind(self, pod: "FakePod") -> None:
        for site in self.sites.pop(pod.uid, []):
            await site.stop()
        for number in pod.ports.values():
            self.by_address.pop((pod.ip, number), None)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ip, port = request.transport.get_extra_info("sockname")[:2]
        found = self.by_address.get((ip, port))
        if found is None:
            return web.Response(status=503, text="no fake pod here")
        pod, port_name = found
        status, body = pod.answer(port_name, request.method, request.path, request.query)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                            content_type="application/json")


class FakePod(PodProcess):
    """A pod whose container is `server.app`: same status, readiness and lifecycle as a process pod."""

    def __init__(self, pod, ip, pod_dir, on_change, inflight, server: FakePodServer):
        super().__init__(pod, ip, pod_dir, on_change, inflight)
        self.server = server
        self.ports = {p.get("name") or str(p["containerPort"]): int(p["containerPort"])
                      for p in self.container.get("ports") or [] if p.get("protocol", "TCP") == "TCP"}
        self.env: dict[str, str] = {}
        self.argv: list[str] = []
        self.answered = 0

    def answer(self, port: str, method: str, path: str, query: Mapping[str, str]) -> tuple[int, Any]:
        self.answered += 1
        try:
            return self.server.app.handle(self, port, method, path, query)
        except Exception as exc:  # an app bug is the pod's 500, not the kubelet's crash
            log.exception("fake pod %s: the app failed", self.pod["metadata"]["name"])
            return 500, {"error": repr(exc)}

    def start(self, config_maps: dict[str, dict[str, Any]], session: aiohttp.ClientSession) -> None:
        argv, env = self.prepare(config_maps)   # volumes, env and $(VAR)s as for a real pod
        self.argv = argv
        self.env = {k: v for k, v in env.items() if k in {e.get("name") for e in self.container.get("env") or []}}
        self.tasks = [asyncio.create_task(self._run_fake())]

    async def _run_fake(self) -> None:
        try:
            await self.server.bind(self)
        except OSError as exc:
            self.error = f"cannot listen on {self.ip}: {exc}"
            self.state = {"waiting": {"reason": "RunContainerError", "message": self.error}}
            self.on_change()
            return
        self.state = {"running": {"startedAt": now()}}
        self.on_change()
        await self._probe_in_process()

    async def _probe_in_process(self) -> None:
        spec = self.container.get("readinessProbe")
        get = (spec or {}).get("httpGet") or {}
        if spec is not None and not get:
            raise PodSpecError("only httpGet probes are supported here")
        period = float((spec or {}).get("periodSeconds", 10))
        await asyncio.sleep(float((spec or {}).get("initialDelaySeconds", 0)))
        port_name = None
        if get:
            number = _resolve_port(get.get("port"), self.container)
            port_name = next((n for n, p in self.ports.items() if p == number), str(number))
        while not self.terminating:
            ready = True
            if port_name is not None:
                status, _ = self.answer(port_name, "GET", get.get("path", "/"), {})
                ready = 200 <= status < 400
            if ready != self.ready and not self.terminating:
                self.ready = ready
                self.on_change()
            await asyncio.sleep(period)

    async def stop(self, drain_s: float, grace_s: float) -> None:
        if await self._drain(drain_s, grace_s) is None:
            return
        await self.server.unbind(self)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    def pids(self) -> set[int]:
        return set()

    def status(self) -> dict[str, Any]:
        status = super().status()
        for container in status["containerStatuses"]:
            if "running" in self.state:
                container["containerID"] = f"fake://{self.ip}"
        return status


class FakeDeploymentKubelet(DeploymentKubelet):
    """The Deployment kubelet with fake pods (Jobs still run as processes, see `kubelet.py`)."""

    def __init__(self, api_url: str, workdir: Path, app: FakePodApp, interval_s: float = 0.5):
        super().__init__(api_url, workdir, interval_s)
        self.fake_server = FakePodServer(app)

    async def __aenter__(self) -> "FakeDeploymentKubelet":
        await self.fake_server.start()
        return await super().__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        await self.fake_server.close()

    def _pod_process(self, pod: dict, ip: str, pod_dir: Path) -> PodProcess:
        return FakePod(pod, ip, pod_dir, self.dirty.set, lambda address: self.inflight[address], self.fake_server)


def fake_deployment_kubelet(app_spec: str) -> Callable[[str, Path], FakeDeploymentKubelet]:
    """A node agent for `sandbox.server` whose Deployment pods are answered by `app_spec`."""
    def agent(api_url: str, workdir: Path) -> FakeDeploymentKubelet:
        return FakeDeploymentKubelet(api_url, workdir, load_app(app_spec, workdir))
    return agent
