"""A local cluster for programs that drive the sandbox: the one harness of the demo, the benchmarks and
the end-to-end tests.

    with LocalCluster(workdir).start() as cluster:
        cluster.apply_crd(Path("crds/widgets.yaml"))          # applied and Established
        cluster.create_namespace("demo")
        controller = cluster.spawn("controller", [sys.executable, "-m", "my_controller"])
        cluster.patch("widget", "w1", {"spec": {"size": 3}}, namespace="demo")
        cluster.wait(lambda: cluster.get("widget", "w1", namespace="demo").get("status"), 30, "a status")

What it holds: the API process (`python -m sandbox up --foreground`, `sandbox.server.SandboxProcess`),
its node agents either in that process or, with `separate_node=True`, in a `python -m sandbox node`
process beside it (so the API can restart under running pods: `restart_api`), the real `kubectl` with
the sandbox's client environment, and the child processes a program starts against it (`spawn`: each
with its log file, stopped in reverse order at the end). It knows nothing of what runs on it: the
caller names the CRDs and the commands.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import yaml

from sandbox import env as sandbox_env
from sandbox import tools
from sandbox.env import free_port
from sandbox.server import NodeProcess, SandboxProcess

T = TypeVar("T")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ClusterError(RuntimeError):
    """A kubectl call failed, or what a caller waited for did not happen in time; the message says which."""


class WaitTimeout(ClusterError):
    """`wait` gave up; the message names what it waited for and the last value it saw."""


def find_kubectl(install_dir: Path | None = None) -> str:
    """The kubectl to run: the venv's or PATH's, else one installed from the tools cache."""
    try:
        return str(tools.find_tool("kubectl"))
    except tools.ToolsError:
        return str(tools.install(install_dir)["kubectl"])


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS from /proc), in MiB; NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5,
         alive: Callable[[], None] | None = None) -> T:
    """Poll `predicate` until it returns a truthy value and return that; `alive` (called first each
    round) may raise to stop early, e.g. when a process under test died. Raises WaitTimeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if alive is not None:
            alive()
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"no {what} within {timeout:.0f}s (last: {str(last)[:300]})")
        time.sleep(interval)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM (what `timeout` and supervisors send) and SIGINT raise KeyboardInterrupt in the block,
    so the `finally` that stops the cluster runs: the children live in their own sessions and would
    otherwise outlive the program. Use `uninterruptible` around that cleanup."""
    previous = {sig: signal.signal(sig, raise_interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """SIGTERM and SIGINT ignored in the block: a second signal must not cut a cleanup short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Child:
    """A process started against the cluster (`LocalCluster.spawn`), in its own session so a Ctrl-C
    reaches only the program that started it; stdout and stderr go to `log_path`."""
    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal its whole process group, SIGKILL it after `timeout` seconds."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def check_alive(self) -> None:
        """Raise ClusterError (with the log's tail) if the process has exited."""
        if self.process.poll() is not None:
            raise ClusterError(f"{self.name} exited ({self.process.returncode}): {self.tail(2000)}")


@dataclass
class LocalCluster:
    """The sandbox API (+ node agents), kubectl, and the processes started against it.

    `separate_node`: the node agents in their own process, so `restart_api` keeps pods serving (the
    API then persists its objects and keeps its port). `fake_pods`, `runtime`, `shared`: as for
    `python -m sandbox up` (`sandbox.server.node_agents`). `namespace`: the default for `get`,
    `patch` and `apply`. `kubectl_bin`: a given kubectl instead of `find_kubectl()`."""
    workdir: Path
    namespace: str | None = None
    separate_node: bool = False
    fake_pods: str | None = None
    runtime: str = "process"
    shared: Sequence[Path] = ()
    kubectl_bin: str | None = None
    kubectl_timeout: float = 60.0
    # set by `start`
    env: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    url: str = field(default="", init=False)
    api: SandboxProcess | None = field(default=None, init=False, repr=False)
    node: NodeProcess | None = field(default=None, init=False, repr=False)
    children: list[Child] = field(default_factory=list, init=False, repr=False)
    _port: int = field(default=0, init=False, repr=False)

    @property
    def sandbox_dir(self) -> Path:
        return Path(self.workdir) / "sandbox"

    @property
    def api_pid(self) -> int:
        return self.api.process.pid

    # -- processes -------------------------------------------------------------------------------
    def start(self) -> "LocalCluster":
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubectl_bin = self.kubectl_bin or find_kubectl(self.workdir / "bin")
        self._port = free_port() if self.separate_node else 0
        self._start_api()
        if self.separate_node:
            self.node = NodeProcess(self.sandbox_dir)
            self.node.start()
        self.env = sandbox_env.client_env(self.sandbox_dir)
        return self

    def _start_api(self) -> None:
        self.api = SandboxProcess(self.sandbox_dir, port=self._port, persist=self.separate_node,
                                  node=not self.separate_node, fake_pods=self.fake_pods, runtime=self.runtime,
                                  shared=[str(p) for p in self.shared])
        self.url = self.api.start()["url"]

    def restart_api(self, down_s: float = 3.0) -> float:
        """Stop the API (SIGTERM: it saves its objects), wait `down_s`, start it again on the same port;
        returns how long the start took. Only with `separate_node` (the pods keep running)."""
        if not self.separate_node:
            raise ClusterError("restart_api needs separate_node=True (the node agents outside the API)")
        self.api.stop()
        time.sleep(down_s)
        began = time.monotonic()
        self._start_api()
        return time.monotonic() - began

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, *,
              log_path: Path | None = None, cwd: Path | None = None) -> Child:
        """Start `argv` with the sandbox's client environment (plus `env`); its output is appended to
        `log_path` (default `<workdir>/<name>.log`). It is stopped by `stop`, newest first."""
        log_path = log_path or self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self) -> None:
        """The spawned processes first (newest first), then the node agents, then the API."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        for part in (self.node, self.api):
            if part is not None:
                part.stop()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- kubectl ---------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float | None = None) -> str:
        """Run kubectl against the sandbox; its stdout. A failure raises ClusterError unless `check=False`."""
        result = subprocess.run([self.kubectl_bin, *args], env=self.env, input=input, capture_output=True,
                                text=True, timeout=timeout or self.kubectl_timeout)
        if check and result.returncode != 0:
            raise ClusterError(f"`kubectl {' '.join(args)}` failed: {result.stderr.strip()}")
        return result.stdout

    def _ns(self, namespace: str | None) -> list[str]:
        namespace = namespace or self.namespace
        return ["-n", namespace] if namespace else []

    def get(self, *args: str, namespace: str | None = None) -> dict:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, *self._ns(namespace), "-o", "json"))

    def apply(self, body: dict | str, namespace: str | None = None) -> str:
        """`kubectl apply -f -` of one object (a dict) or a YAML/JSON text."""
        text = body if isinstance(body, str) else yaml.safe_dump(body)
        return self.kubectl("apply", *self._ns(namespace), "-f", "-", input=text)

    def patch(self, kind: str, name: str, body: dict, namespace: str | None = None) -> str:
        """A merge patch of one object."""
        return self.kubectl("patch", kind, name, *self._ns(namespace), "--type", "merge", "-p", json.dumps(body))

    def delete(self, kind: str, name: str, namespace: str | None = None) -> str:
        """Delete without waiting; an object that is already gone is fine."""
        return self.kubectl("delete", kind, name, *self._ns(namespace), "--wait=false", "--ignore-not-found",
                            check=False)

    def apply_crd(self, path: Path, timeout: float = 30.0) -> str:
        """Apply a CRD file and wait until it is Established; returns its name."""
        name = yaml.safe_load(Path(path).read_text())["metadata"]["name"]
        self.kubectl("apply", "-f", str(path))
        self.kubectl("wait", "--for=condition=Established", f"crd/{name}", f"--timeout={timeout:.0f}s")
        return name

    def create_namespace(self, name: str) -> None:
        self.kubectl("create", "namespace", name)

    def wait(self, predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5,
             alive: Callable[[], None] | None = None) -> T:
        return wait(predicate, timeout, what, interval, alive)
