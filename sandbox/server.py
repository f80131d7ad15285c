"""Run the sandbox: the API emulator on 127.0.0.1 (plain http) plus its node agents, until stopped.

The running sandbox is described by `<workdir>/sandbox.json` (pid, url, kubeconfig), written once it
serves requests and removed when it stops; `python -m sandbox down` uses it to stop the process.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncContextManager, Callable, Sequence

import kmock

from sandbox.emulator import SandboxAPI
from sandbox.env import write_kubeconfig
from sandbox.deployments import deployment_kubelet
from sandbox.kubelet import job_kubelet

STATE_NAME = "sandbox.json"
STATE_FILE_NAME = "state.json"
NODE_STATE_NAME = "node.json"
AUDIT_LOG_NAME = "audit.jsonl"   # requests of clients with their own token (SandboxAPI.audit_log)

# A node agent runs beside the API for the sandbox's lifetime: `agent(api_url, workdir)` returns an
# async context manager. The process kubelet plugs in here: its Job part (Jobs -> subprocesses) and
# its Deployment part (Deployments/ReplicaSets/Pods -> process groups on 127.0.0.N, Services -> proxies).
NodeAgent = Callable[[str, Path], AsyncContextManager[object]]
DEFAULT_AGENTS: tuple[NodeAgent, ...] = (job_kubelet, deployment_kubelet)


def state_path(workdir: Path) -> Path:
    return Path(workdir) / STATE_NAME


def read_state(workdir: Path) -> dict | None:
    try:
        return json.loads(state_path(workdir).read_text())
    except (OSError, ValueError):
        return None


def _save(api: SandboxAPI, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(api.dump_state()))
    tmp.replace(path)  # atomic: a crash leaves the previous snapshot, never half a file


async def _persist(api: SandboxAPI, path: Path, interval_s: float = 1.0) -> None:
    saved_rv = api.resource_version
    while True:
        await asyncio.sleep(interval_s)
        if api.resource_version != saved_rv:
            saved_rv = api.resource_version
            _save(api, path)


async def serve(workdir: Path, port: int = 0, agents: Sequence[NodeAgent] = DEFAULT_AGENTS,
                stop: asyncio.Event | None = None, on_ready: Callable[[dict], None] | None = None,
                persist: bool = False) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT when run as the main program).

    With `persist`, the objects are loaded from and saved (each second when changed, and at exit) to
    `<workdir>/state.json`, so a restarted API keeps its objects; otherwise it starts empty.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stop = stop or asyncio.Event()
    api = SandboxAPI(pod_logs_dir=workdir / "pods", audit_log=workdir / AUDIT_LOG_NAME)
    state_file = workdir / STATE_FILE_NAME
    if persist and state_file.exists():
        try:
            api.load_state(json.loads(state_file.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"{state_file} is not a sandbox state snapshot ({exc}); move it away") from exc
    async with api, kmock.Server(api, port=port or None) as server:
        url = f"http://127.0.0.1:{server.port}"
        kubeconfig = write_kubeconfig(workdir, url)
        async with contextlib.AsyncExitStack() as stack:
            for agent in agents:
                await stack.enter_async_context(agent(url, workdir))
            state = {"pid": os.getpid(), "url": url, "port": server.port, "kubeconfig": str(kubeconfig)}
            state_path(workdir).write_text(json.dumps(state))
            if on_ready:
                on_ready(state)
            saver = asyncio.create_task(_persist(api, state_file)) if persist else None
            try:
                await stop.wait()
            finally:
                if saver is not None:
                    saver.cancel()
                    _save(api, state_file)
                with contextlib.suppress(FileNotFoundError):
                    current = read_state(workdir)
                    if current and current.get("pid") == os.getpid():
                        state_path(workdir).unlink()


async def serve_node(workdir: Path, api_url: str, agents: Sequence[NodeAgent] = DEFAULT_AGENTS,
                     stop: asyncio.Event | None = None, on_ready: Callable[[dict], None] | None = None) -> None:
    """Only the node agents (pods, Jobs, Service proxies), against an API served by another process.

    Like a real node, the agents outlive an API restart: pods keep serving and the agents re-list
    once the API answers again. `<workdir>/node.json` names the running node process.
    """
    workdir = Path(workdir).resolve()
    stop = stop or asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        for agent in agents:
            await stack.enter_async_context(agent(api_url, workdir))
        state = {"pid": os.getpid(), "url": api_url}
        (workdir / NODE_STATE_NAME).write_text(json.dumps(state))
        if on_ready:
            on_ready(state)
        try:
            await stop.wait()
        finally:
            (workdir / NODE_STATE_NAME).unlink(missing_ok=True)


def _until_signalled(serving: Callable[[asyncio.Event], "asyncio.Future | object"]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serving(stop)
    asyncio.run(main())


def node_agents(fake_pods: str | None = None, runtime: str = "process",
                shared: Sequence[str] = ()) -> tuple[NodeAgent, ...]:
    """The default agents (pods and Jobs as local processes); with `runtime="podman"` pods and Jobs
    as podman containers of their images, with the `shared` directories mounted (`sandbox.containers`);
    or with `fake_pods` (`MODULE:FACTORY`, see `sandbox.fakepods`) the Deployment kubelet's pods faked
    in process (Jobs still run as processes)."""
    if runtime == "podman":
        if fake_pods:
            raise ValueError("--fake-pods and --runtime podman exclude each other")
        from sandbox.containers import container_agents
        return container_agents(shared)
    if runtime != "process":
        raise ValueError(f"unknown runtime {runtime!r}; use process or podman")
    if shared:
        raise ValueError("--share is for --runtime podman (processes see the whole filesystem)")
    if not fake_pods:
        return DEFAULT_AGENTS
    from sandbox.fakepods import fake_deployment_kubelet
    return (job_kubelet, fake_deployment_kubelet(fake_pods))


def run_foreground(workdir: Path, port: int = 0, on_ready: Callable[[dict], None] | None = None,
                   persist: bool = False, node: bool = True, fake_pods: str | None = None,
                   runtime: str = "process", shared: Sequence[str] = ()) -> None:
    agents = node_agents(fake_pods, runtime, shared) if node else ()
    _until_signalled(lambda stop: serve(workdir, port, agents=agents, stop=stop, on_ready=on_ready, persist=persist))


def run_node_foreground(workdir: Path, api_url: str, on_ready: Callable[[dict], None] | None = None,
                        runtime: str = "process", shared: Sequence[str] = ()) -> None:
    agents = node_agents(None, runtime, shared)
    _until_signalled(lambda stop: serve_node(workdir, api_url, agents=agents, stop=stop, on_ready=on_ready))


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Ask a child process to stop, then kill it if it has not after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class SandboxProcess:
    """`python -m sandbox up --foreground` as a child process, for tests and the demo:

        with SandboxProcess(workdir) as state:   # state: {"pid", "url", "kubeconfig", ...}
            ...

    With `node=False` the API runs without node agents (start a `NodeProcess` beside it), so the API
    can be restarted (`persist=True`, a fixed `port`) while pods keep serving. `fake_pods`
    (`MODULE:FACTORY`) fakes the Deployment pods in process (`sandbox.fakepods`), for scale tests.
    """

    LOG_NAME = "api.log"

    def __init__(self, workdir: Path, timeout: float = 30.0, *, port: int = 0, persist: bool = False,
                 node: bool = True, fake_pods: str | None = None, runtime: str = "process",
                 shared: Sequence[str] = ()):
        self.workdir, self.timeout = Path(workdir), timeout
        self.port, self.persist, self.node, self.fake_pods = port, persist, node, fake_pods
        self.runtime, self.shared = runtime, [str(s) for s in shared]
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sandbox", "up", "--foreground", "--workdir", str(self.workdir),
                *(["--port", str(self.port)] if self.port else []), *(["--persist"] if self.persist else []),
                *([] if self.node else ["--no-node"]), *(["--fake-pods", self.fake_pods] if self.fake_pods else []),
                *(["--runtime", self.runtime] if self.runtime != "process" else []),
                *[arg for path in self.shared for arg in ("--share", path)]]

    def ready(self) -> dict | None:
        state = read_state(self.workdir)
        return state if state and state.get("pid") == self.process.pid else None

    def start(self) -> dict:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / self.LOG_NAME
        log = open(log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            state = self.ready()
            if state:
                return state
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the sandbox did not start: {log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def __enter__(self) -> dict:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class NodeProcess(SandboxProcess):
    """`python -m sandbox node`: the node agents for an API started with `node=False`."""

    LOG_NAME = "node.log"

    def __init__(self, workdir: Path, timeout: float = 30.0):
        super().__init__(workdir, timeout)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sandbox", "node", "--workdir", str(self.workdir)]

    def ready(self) -> dict | None:
        try:
            state = json.loads((self.workdir / NODE_STATE_NAME).read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("pid") == self.process.pid else None
