"""The process kubelet, pod part: one long-running Pod = one local process group with its own IP.

A cluster gives every pod its own IP, so pods never collide on ports. Here each pod gets a loopback
address `127.0.0.N` (Linux routes all of 127/8 to `lo`, no setup needed) as `status.podIP`, and its
process binds its real container ports there. What a container spec says is honoured the way a
kubelet would, so the same manifests run on a real cluster:
- `env` with `value`, `configMapKeyRef` and the downward API (`fieldRef`: `status.podIP`,
  `metadata.name`, `metadata.namespace`, `metadata.uid`), `$(VAR)` expansion (and `$$` escaping) in
  env values, `command` and `args`;
- volumes: `configMap` (projected as files and re-synced when the ConfigMap changes) and `emptyDir`,
  at local directories under `<workdir>/pods/<ns>/<pod>/volumes/` that replace the `mountPath` in
  `command`/`args`/env values (as the Job kubelet does); `python`/`python3` is the sandbox's interpreter;
- `readinessProbe`/`livenessProbe` `httpGet` on the pod IP (port by name or number);
- a process that exits is restarted with exponential backoff (`restartCount`, `CrashLoopBackOff`);
- an image whose registry host is in the reserved `.invalid` domain (`registry.invalid/model:1`)
  cannot be pulled: the container waits in `ErrImagePull`/`ImagePullBackOff` and never starts;
- stopping is graceful: not ready first, a drain, SIGTERM to the process group, SIGKILL (also of
  descendants that left the group, e.g. TorchServe's own session) after the grace period.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import errno
import fcntl
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import aiohttp

log = logging.getLogger("sandbox.pods")

POD_NETWORK = ipaddress.IPv4Network("127.0.0.0/24")   # pod IPs: 127.0.0.2 upward (Services: 127.0.1.0/24)
POD_OVERFLOW = ipaddress.IPv4Network("127.0.64.0/18")  # then these: a /24 holds 253 pods, a scale test wants 1,000
MAX_BACKOFF_S = 10.0
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
DOWNWARD_FIELDS = ("status.podIP", "metadata.name", "metadata.namespace", "metadata.uid")


class PodSpecError(RuntimeError):
    """The pod asks for something this kubelet cannot provide; the message says what."""


def now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ports_free(address: str, ports: Iterable[int]) -> bool:
    """Whether each TCP port can be bound on `address` right now (nothing else listens there)."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False  # other errors (e.g. a privileged port) are not about this address
    return True


class AddressPool:
    """Hands out loopback addresses, lowest free first, from `first` up within `network`, then (once
    that is full) through `overflow`.

    Several sandboxes may run on one machine (parallel test sessions): each address taken is also
    claimed with an exclusive lock on `<lock_dir>/<address>` (released when the sandbox exits, even
    by SIGKILL), and an address where the given ports cannot be bound is skipped."""

    def __init__(self, network: ipaddress.IPv4Network, first: str, lock_dir: Path | None = None,
                 overflow: ipaddress.IPv4Network | None = None):
        self.network, self.first, self.overflow = network, ipaddress.IPv4Address(first), overflow
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"selfheal-sandbox-addresses-{os.getuid()}"
        self.claims: dict[str, int] = {}  # address -> fd of its lock file

    def take(self, ports: Iterable[int] = ()) -> str:
        ports = list(ports)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for address in self._candidates():
            text = str(address)
            if text not in self.claims and self._claim(text):
                if ports_free(text, ports):
                    return text
                self.release(text)
        raise PodSpecError(f"no free address left in {' or '.join(map(str, self.networks()))}")

    def networks(self) -> list[ipaddress.IPv4Network]:
        return [self.network, *([self.overflow] if self.overflow is not None else [])]

    def holds(self, address: str) -> bool:
        """Whether `address` is one this pool hands out (in `network` or `overflow`)."""
        return any(ipaddress.IPv4Address(address) in network for network in self.networks())

    def _candidates(self) -> Iterator[ipaddress.IPv4Address]:
        address = self.first
        while address in self.network:
            yield address
            address += 1
        if self.overflow is not None:
            yield from self.overflow.hosts()

    def claim(self, address: str) -> bool:
        """Claim a given address (e.g. a Service's existing clusterIP); False if another sandbox has it."""
        return address in self.claims or self._claim(address)

    def _claim(self, address: str) -> bool:
        fd = os.open(self.lock_dir / address, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.claims[address] = fd
        return True

    def release(self, address: str) -> None:
        fd = self.claims.pop(address, None)
        if fd is not None:
            os.close(fd)  # closing drops the lock


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, undefined ones stay as written,
    `$$` is a literal `$` (so `$$(VAR)` stays `$(VAR)`)."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REF.sub(replace, text)


def secret_key(name: str) -> str:
    """Where a Secret sits in the kubelets' `config_maps` mapping (no object name holds a ':')."""
    return f"secret:{name}"


def env_from(container: dict[str, Any], config_maps: dict[str, dict[str, Any]]) -> dict[str, str]:
    """`envFrom`: every key of a ConfigMap (`configMapRef`) or Secret (`secretRef`, decoded), with its
    `prefix`; a missing source fails the pod unless `optional`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            ref, kind = source["secretRef"], "secret"
            obj = config_maps.get(secret_key(ref.get("name", "")))
            data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in ((obj or {}).get("data") or {}).items()}
            data.update((obj or {}).get("stringData") or {})
        elif "configMapRef" in source:
            ref, kind = source["configMapRef"], "configmap"
            obj = config_maps.get(ref.get("name", ""))
            data = dict((obj or {}).get("data") or {})
        else:
            raise PodSpecError(f"container {container.get('name')!r}: envFrom {sorted(source)} is not supported here")
        if obj is None and not ref.get("optional"):
            raise PodSpecError(f"container {container.get('name')!r}: envFrom {kind} {ref.get('name')!r} not found")
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    return env


def container_env(container: dict[str, Any], pod: dict[str, Any], pod_ip: str,
                  config_maps: dict[str, dict[str, Any]], local_path: Callable[[str], str]) -> dict[str, str]:
    """The container's own environment (not the inherited one), in order, each value expanded
    against the variables defined before it, as the kubelet does."""
    meta = pod["metadata"]
    fields = {"status.podIP": pod_ip, "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "metadata.uid": meta.get("uid", "")}
    env: dict[str, str] = env_from(container, config_maps)   # `env` entries win over envFrom, as in Kubernetes
    for var in container.get("env") or []:
        name = var.get("name")
        if not name:
            raise PodSpecError(f"container {container.get('name')!r}: an env entry has no name")
        source = var.get("valueFrom") or {}
        if "value" in var or not source:
            env[name] = local_path(expand(str(var.get("value", "")), env))
        elif "fieldRef" in source:
            path = source["fieldRef"].get("fieldPath", "")
            if path not in fields:
                raise PodSpecError(f"env {name}: fieldRef {path!r} is not supported here (only {', '.join(DOWNWARD_FIELDS)})")
            env[name] = fields[path]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = (config_maps.get(ref.get("name", "")) or {}).get("data") or {}
            if ref.get("key") in data:
                env[name] = data[ref["key"]]
            elif not ref.get("optional"):
                raise PodSpecError(f"env {name}: configmap {ref.get('name')!r} has no key {ref.get('key')!r}")
        else:
            raise PodSpecError(f"env {name}: valueFrom {sorted(source)} is not supported here "
                               "(fieldRef, configMapKeyRef)")
    return env


def project_config_map(source: dict[str, Any], config_map: dict[str, Any] | None, target: Path) -> bool:
    """Write the ConfigMap's keys (or its `items`) as files under `target`; rewrite only files whose
    content changed (each atomically), remove files of keys that are gone. Returns whether anything
    changed."""
    if config_map is None and not source.get("optional"):
        raise PodSpecError(f"configmap {source.get('name')!r} not found")
    data = (config_map or {}).get("data") or {}
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    wanted: dict[Path, str] = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise PodSpecError(f"configmap {source.get('name')!r} has no key {item['key']!r}")
        wanted[target / item.get("path", item["key"])] = data[item["key"]]
    changed = False
    target.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        changed = True
    for path in target.rglob("*"):
        if path.is_file() and path not in wanted and not path.name.startswith("."):
            path.unlink()
            changed = True
    return changed


def mounted_volumes(spec: dict[str, Any], container: dict[str, Any], pod_dir: Path,
                    config_maps: dict[str, dict[str, Any]],
                    config_volumes: dict[str, tuple[dict[str, Any], Path]]
                    ) -> Iterator[tuple[dict[str, Any], dict[str, Any], Path]]:
    """Each volumeMount of `container` with the pod volume it names and its local directory,
    `<pod_dir>/volumes/<name>`. A configMap volume is projected there first and recorded in
    `config_volumes` (mount name -> (source, local dir)) for re-syncing; an emptyDir is left to the
    caller; a mount of no volume, or of any other kind of volume, is refused (PodSpecError)."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodSpecError(f"volumeMount {mount['name']!r} names no volume of the pod")
        local = pod_dir / "volumes" / mount["name"]
        if "configMap" in volume:
            source = volume["configMap"]
            project_config_map(source, config_maps.get(source.get("name", "")), local)
            config_volumes[mount["name"]] = (source, local)
        elif "emptyDir" not in volume:
            raise PodSpecError(f"volume {mount['name']!r}: only configMap and emptyDir volumes are supported here")
        yield mount, volume, local


def prepare_container(pod: dict[str, Any], container: dict[str, Any], pod_dir: Path, ip: str,
                      config_maps: dict[str, dict[str, Any]], message_path: Path
                      ) -> tuple[list[str], dict[str, str], dict[str, tuple[dict[str, Any], Path]]]:
    """One container of a pod as a local process, the same for Deployment pods and Job pods: its
    volumes projected under `<pod_dir>/volumes/` (configMap, emptyDir; anything else refused), the
    mount paths and the termination-message path rewritten in argv and env, env built as the kubelet
    does (`envFrom`, `value` with `$(VAR)` expansion, `fieldRef`, `configMapKeyRef`), `$(VAR)`
    expanded in command/args. Returns argv, the full env, and the projected ConfigMap volumes
    (mount name -> (source, local dir)) for re-syncing. `config_maps` holds every ConfigMap and
    Secret the container names (see `kubelet.pod_config_maps`); a missing one fails unless optional."""
    pod_dir.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, str] = {}
    config_volumes: dict[str, tuple[dict[str, Any], Path]] = {}
    for mount, volume, local in mounted_volumes(pod["spec"], container, pod_dir, config_maps, config_volumes):
        if "emptyDir" in volume:   # keeps what an init container wrote
            local.mkdir(parents=True, exist_ok=True)
        mapping[mount["mountPath"].rstrip("/")] = str(local)
    message_path.touch()
    mapping[container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH)] = str(message_path)

    def local_path(text: str) -> str:
        for remote in sorted(mapping, key=len, reverse=True):  # the most specific mount wins
            text = text.replace(remote, mapping[remote])
        return text

    own_env = container_env(container, pod, ip, config_maps, local_path)
    argv = [local_path(expand(str(a), own_env)) for a in (container.get("command") or []) + (container.get("args") or [])]
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    env = dict(os.environ)
    if env.get("PYTHONPATH"):  # the pod runs in its own directory: keep the sandbox's entries valid
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    env.update(own_env)
    env["TERMINATION_MESSAGE_PATH"] = str(message_path)
    return argv, env, config_volumes


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every live process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                table[int(entry)] = int(fields[1])
    return table


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (children that started their own session included)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


POD_MARKER = "SANDBOX_POD_UID"


def marked(uid: str) -> set[int]:
    """Live processes whose environment carries this pod's marker (orphans included)."""
    needle = f"{POD_MARKER}={uid}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                continue
    return found


def unpullable(image: str) -> bool:
    """Whether the sandbox treats `image` as one no registry serves: its registry host is in the
    reserved `.invalid` top-level domain (RFC 2606), e.g. `registry.invalid/model:1`. Everything
    else counts as pulled (the process kubelet runs the container's command, not the image)."""
    host = image.split("/")[0] if "/" in image else ""
    return host.split(":")[0].endswith(".invalid")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def identities(pids: set[int]) -> set[tuple[int, int]]:
    """(pid, start time) of each live process: a pid alone may name another process later (the
    kernel reuses pids), and a pod must never kill a process it did not start."""
    found = set()
    for pid in pids:
        fields = _stat(pid)
        if fields is not None and fields[0] != "Z":
            found.add((pid, int(fields[19])))
    return found


def same_process(identity: tuple[int, int]) -> bool:
    fields = _stat(identity[0])
    return fields is not None and fields[0] != "Z" and int(fields[19]) == identity[1]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _resolve_port(port: Any, container: dict[str, Any]) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise PodSpecError(f"container {container.get('name')!r} has no port named {port!r}")


class Probe:
    """An httpGet probe with the Kubernetes thresholds; `None` spec means always succeeding."""

    def __init__(self, spec: dict[str, Any] | None, container: dict[str, Any], ip: str):
        self.spec = spec or {}
        self.enabled = spec is not None
        if self.enabled and "httpGet" not in self.spec:
            raise PodSpecError(f"container {container.get('name')!r}: only httpGet probes are supported here")
        get = self.spec.get("httpGet") or {}
        self.url = f"http://{ip}:{_resolve_port(get.get('port'), container)}{get.get('path', '/')}" if get else ""
        self.initial_delay = float(self.spec.get("initialDelaySeconds", 0))
        self.period = float(self.spec.get("periodSeconds", 10))
        self.timeout = float(self.spec.get("timeoutSeconds", 1))
        self.success_threshold = int(self.spec.get("successThreshold", 1))
        self.failure_threshold = int(self.spec.get("failureThreshold", 3))

    async def check(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.url, timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                await resp.read()
                return 200 <= resp.status < 400
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False


class PodProcess:
    """Runs one pod's first container until stopped: restarts, probes, status, config sync."""

    def __init__(self, pod: dict[str, Any], ip: str, pod_dir: Path, on_change: Callable[[], None],
                 inflight: Callable[[str], int] = lambda ip: 0):
        self.pod, self.ip, self.pod_dir = pod, ip, pod_dir
        self.uid = pod["metadata"]["uid"]
        self.on_change, self.inflight = on_change, inflight
        containers = pod["spec"].get("containers") or []
        if not containers or not containers[0].get("command"):
            raise PodSpecError("the sandbox kubelet runs `command` (+ `args`) of the first container; none was given")
        self.container = containers[0]
        self.init_containers = pod["spec"].get("initContainers") or []
        for init in self.init_containers:
            if not init.get("command"):
                raise PodSpecError(f"init container {init.get('name')!r}: the sandbox kubelet runs `command` "
                                   "(+ `args`); none was given")
        # Init containers run in order, each to success, before the main container starts (a failed
        # one is restarted with backoff, as a kubelet does for restartPolicy Always).
        self.initialized = not self.init_containers
        self.init_statuses: list[dict[str, Any]] = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
             "started": False, "state": {"waiting": {"reason": "PodInitializing"}}, "lastState": {}}
            for c in self.init_containers]
        self.ready = False
        self.terminating = False
        self.restart_count = 0
        self.started_at = now()
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.error = ""
        self.process: asyncio.subprocess.Process | None = None
        self.known_descendants: set[tuple[int, int]] = set()   # (pid, start time)
        self.tasks: list[asyncio.Task] = []
        self.config_volumes: dict[str, tuple[dict[str, Any], Path]] = {}

    # -- setup ----------------------------------------------------------------------------------
    def prepare(self, config_maps: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
        return self.prepare_container(self.container, config_maps)

    def prepare_init(self, config_maps: dict[str, dict[str, Any]]) -> list[tuple[list[str], dict[str, str]]]:
        """argv and env of each init container (they share the pod's volumes with the main one)."""
        return [self.prepare_container(init, config_maps) for init in self.init_containers]

    def prepare_container(self, container: dict[str, Any], config_maps: dict[str, dict[str, Any]]
                          ) -> tuple[list[str], dict[str, str]]:
        message_path = self.pod_dir / ("termination-log" if container is self.container
                                       else f"termination-log-{container['name']}")
        argv, env, config_volumes = prepare_container(self.pod, container, self.pod_dir, self.ip, config_maps,
                                                      message_path)
        self.config_volumes.update(config_volumes)
        return argv, env

    def sync_config_maps(self, config_maps: dict[str, dict[str, Any]]) -> None:
        """Re-project ConfigMap volumes, as the kubelet's periodic sync does (a file changes in place)."""
        for name, (source, local) in self.config_volumes.items():
            try:
                if project_config_map(source, config_maps.get(source.get("name", "")), local):
                    log.info("pod %s: volume %s updated", self.pod["metadata"]["name"], name)
            except PodSpecError as exc:
                log.warning("pod %s: volume %s: %s", self.pod["metadata"]["name"], name, exc)

    # -- running --------------------------------------------------------------------------------
    def start(self, config_maps: dict[str, dict[str, Any]], session: aiohttp.ClientSession) -> None:
        if unpullable(self.container.get("image", "")):
            self.tasks = [asyncio.create_task(self._pull_fails())]
            return
        inits = self.prepare_init(config_maps)
        argv, env = self.prepare(config_maps)
        readiness = Probe(self.container.get("readinessProbe"), self.container, self.ip)
        liveness = Probe(self.container.get("livenessProbe"), self.container, self.ip)
        self.tasks = [asyncio.create_task(self._run(argv, env, inits)),
                      asyncio.create_task(self._probe(readiness, liveness, session))]

    async def _run_init(self, inits: list[tuple[list[str], dict[str, str]]]) -> bool:
        """Run the init containers in order; a failed one restarts with backoff until it succeeds.
        False if the pod was stopped meanwhile."""
        for index, (argv, env) in enumerate(inits):
            name, status = self.init_containers[index]["name"], self.init_statuses[index]
            env = {**env, POD_MARKER: self.uid}
            while True:
                if self.terminating:
                    return False
                with open(self.pod_dir / f"{name}.log", "ab") as out:
                    try:
                        self.process = await asyncio.create_subprocess_exec(
                            *argv, env=env, cwd=self.pod_dir, stdout=out, stderr=asyncio.subprocess.STDOUT,
                            stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
                    except OSError as exc:
                        self.error = f"cannot start {argv[0]!r}: {exc}"
                        status["state"] = {"waiting": {"reason": "RunContainerError", "message": self.error}}
                        self.on_change()
                        return False
                started = now()
                status.update(started=True, state={"running": {"startedAt": started}})
                self.state = {"waiting": {"reason": "PodInitializing"}}
                self.on_change()
                code = await self.process.wait()
                code = 128 - code if code < 0 else code
                self._kill_leftovers()
                terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                              "startedAt": started, "finishedAt": now()}
                message = self._message(self.init_containers[index], self.pod_dir / f"termination-log-{name}",
                                        self.pod_dir / f"{name}.log", code)
                if message:
                    terminated["message"] = message
                if code == 0:
                    status.update(ready=True, started=False, state={"terminated": terminated})
                    self.on_change()
                    break
                if self.terminating:
                    return False
                status["restartCount"] += 1
                delay = min(MAX_BACKOFF_S, 2 ** (status["restartCount"] - 1))
                log.info("pod %s: init container %s exited with %s; restart %d in %.0fs",
                         self.pod["metadata"]["name"], name, code, status["restartCount"], delay)
                status.update(started=False, lastState={"terminated": terminated},
                              state={"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay:.0f}s "
                                                 f"restarting failed container {name}: {message[-300:]}"}})
                self.state = {"waiting": {"reason": "PodInitializing"}}
                self.on_change()
                await asyncio.sleep(delay)
        self.initialized = True
        self.process = None
        return True

    @staticmethod
    def _message(container: dict[str, Any], message_path: Path, log_path: Path, code: int) -> str:
        """The termination message: the file, or the log's tail with FallbackToLogsOnError."""
        message = message_path.read_text(errors="replace") if message_path.exists() else ""
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = "\n".join(log_path.read_text(errors="replace").splitlines()[-80:]) if log_path.exists() else ""
        return message[-4096:]

    async def _pull_fails(self) -> None:
        """An image no registry serves: ErrImagePull, then ImagePullBackOff with a growing back-off,
        as a kubelet reports it; the container never starts and the pod stays Pending."""
        image, attempt = self.container.get("image", ""), 0
        while not self.terminating:
            self.state = {"waiting": {"reason": "ErrImagePull", "message": f'failed to pull image "{image}": '
                                      f"dial tcp: lookup {image.split('/')[0]}: no such host"}}
            self.on_change()
            await asyncio.sleep(1)
            delay = min(MAX_BACKOFF_S, 2 ** attempt)
            attempt += 1
            self.state = {"waiting": {"reason": "ImagePullBackOff",
                                      "message": f'Back-off pulling image "{image}"'}}
            self.on_change()
            await asyncio.sleep(delay)

    async def _run(self, argv: list[str], env: dict[str, str],
                   inits: list[tuple[list[str], dict[str, str]]] = ()) -> None:
        if inits and not await self._run_init(inits):
            return
        log_path = self.pod_dir / f"{self.container['name']}.log"
        # Every process of this pod inherits the marker, so one orphaned by a dying parent (a
        # TorchServe worker whose JVM was killed mid-restart) is still found and stopped.
        env = {**env, POD_MARKER: self.uid}
        while not self.terminating:
            with open(log_path, "ab") as out:
                try:
                    self.process = await asyncio.create_subprocess_exec(
                        *argv, env=env, cwd=self.pod_dir, stdout=out, stderr=asyncio.subprocess.STDOUT,
                        stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
                except OSError as exc:
                    self.error = f"cannot start {argv[0]!r}: {exc}"
                    self.state = {"waiting": {"reason": "RunContainerError", "message": self.error}}
                    self.on_change()
                    return
            started = now()
            self.state = {"running": {"startedAt": started}}
            self.on_change()
            code = await self.process.wait()
            code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as a runtime reports
            self._kill_leftovers()
            self.ready = False
            self.last_state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                              "startedAt": started, "finishedAt": now()}}
            if self.terminating:
                break
            self.restart_count += 1
            delay = min(MAX_BACKOFF_S, 2 ** (self.restart_count - 1))
            log.info("pod %s: process exited with %s; restart %d in %.0fs", self.pod["metadata"]["name"], code,
                     self.restart_count, delay)
            self.state = {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": f"back-off {delay:.0f}s restarting failed container"}}
            self.on_change()
            await asyncio.sleep(delay)

    async def _probe(self, readiness: Probe, liveness: Probe, session: aiohttp.ClientSession) -> None:
        passes = failures = live_failures = 0
        running_since = None
        loop = asyncio.get_running_loop()
        periods = [p.period for p in (readiness, liveness) if p.enabled]
        period = min(periods) if periods else 0.5
        while not self.terminating:
            await asyncio.sleep(period)
            if (not self.initialized or self.process is None or self.process.returncode is not None
                    or self.terminating):
                running_since = None
                passes = failures = live_failures = 0
                continue
            if self.process.pid:
                self.known_descendants |= identities(descendants(self.process.pid))
            running_since = running_since or loop.time()
            age = loop.time() - running_since
            if not readiness.enabled:
                ready = True
            elif age < readiness.initial_delay:
                ready = False
            elif await readiness.check(session):
                passes, failures = passes + 1, 0
                ready = self.ready or passes >= readiness.success_threshold
            else:
                passes, failures = 0, failures + 1
                ready = self.ready and failures < readiness.failure_threshold
            if liveness.enabled and age >= liveness.initial_delay:
                live_failures = 0 if await liveness.check(session) else live_failures + 1
                if live_failures >= liveness.failure_threshold:
                    log.info("pod %s: liveness probe failed; killing the process", self.pod["metadata"]["name"])
                    live_failures = 0
                    await self._signal(signal.SIGKILL)
                    ready = False
            if ready != self.ready and not self.terminating:
                self.ready = ready
                self.on_change()

    async def _drain(self, drain_s: float, grace_s: float) -> float | None:
        """The first half of a graceful stop: not ready at once, then wait at least `drain_s` and until
        no request is in flight (at most until `grace_s` from now). Returns that deadline on the event
        loop's clock, or None if the pod is already stopped."""
        if self.terminating and not self.tasks:
            return None
        self.terminating = True
        self.ready = False
        self.on_change()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        await asyncio.sleep(drain_s)
        while self.inflight(self.ip) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return deadline

    async def stop(self, drain_s: float, grace_s: float) -> None:
        """Graceful stop: not ready at once, drain (at least `drain_s`, until no request is in flight),
        SIGTERM, SIGKILL after `grace_s`; returns when nothing of the pod runs any more."""
        deadline = await self._drain(drain_s, grace_s)
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        if self.process is not None and self.process.returncode is None:
            self.known_descendants |= identities(descendants(self.process.pid))
            await self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), max(0.1, deadline - loop.time()))
            except asyncio.TimeoutError:
                await self._signal(signal.SIGKILL)
                await self.process.wait()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        self._kill_leftovers()

    async def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _kill_leftovers(self) -> None:
        """SIGKILL whatever the pod started that outlived its main process (its group, descendants,
        and anything else carrying its marker)."""
        self.known_descendants |= identities(marked(self.uid) - {os.getpid()})
        groups = {int(f[2]) for f in (_stat(pid) for pid, _ in self.known_descendants if same_process((pid, _)))
                  if f is not None}
        for identity in list(self.known_descendants):
            if same_process(identity):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(identity[0], signal.SIGKILL)
        # The main process's group, while it still is ours: a reaped leader's pid (and group id)
        # may belong to an unrelated process by now.
        if self.process is not None and (self.process.returncode is None or self.process.pid in groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.known_descendants = {i for i in self.known_descendants if same_process(i)}

    def pids(self) -> set[int]:
        """The live processes of this pod (main process and known descendants)."""
        found = {pid for pid, _ in self.known_descendants if same_process((pid, _))} | (marked(self.uid) - {os.getpid()})
        if self.process is not None and self.process.returncode is None:
            found |= {self.process.pid} | descendants(self.process.pid)
        return {p for p in found if alive(p)}

    def remove_dir(self) -> None:
        shutil.rmtree(self.pod_dir / "volumes", ignore_errors=True)

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        ready = self.ready and not self.terminating
        running = "running" in self.state
        ready_text = "True" if ready else "False"
        conditions = [{"type": t, "status": s, "lastProbeTime": None} for t, s in (
            ("PodScheduled", "True"), ("Initialized", "True" if self.initialized else "False"),
            ("ContainersReady", ready_text), ("Ready", ready_text))]
        container_status = {
            "name": self.container["name"], "image": self.container.get("image", ""), "imageID": "",
            "ready": ready, "started": running, "restartCount": self.restart_count, "state": self.state,
            "lastState": self.last_state,
        }
        if self.process is not None and running:
            container_status["containerID"] = f"process://{self.process.pid}"
        status = {"phase": "Running" if running or self.restart_count else "Pending", "podIP": self.ip,
                  "podIPs": [{"ip": self.ip}], "hostIP": "127.0.0.1", "startTime": self.started_at,
                  "conditions": conditions, "containerStatuses": [container_status]}
        if self.init_statuses:
            status["initContainerStatuses"] = [dict(s) for s in self.init_statuses]
        return status
