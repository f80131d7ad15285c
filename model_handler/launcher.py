"""Run a real local TorchServe as a child process that its owner fully controls.

Used by tests, benchmarks, the demo and the sandbox kubelet (which runs each pod as one of these).
`torchserve --start` returns before the server is up and reports success even when it dies, and every
instance shares `/tmp` (pid file, worker sockets) and fixed ports unless told otherwise. So each
instance here gets its own work directory, TMPDIR, log directory and free ports on 127.0.0.1 (HTTP and
gRPC; `bind`/`--bind` picks another address, e.g. a sandbox pod's 127.0.0.N); it runs `--foreground`
in its own process group; `start()` polls `/ping` and the describe API
until every model has READY workers (or raises with the log tail); `stop()` ends the whole group
(frontend JVM and Python workers) and waits until none is left.

    with TorchServeProcess(store, {"fraud": "fraud.mar"}, workers=2) as ts:
        requests.post(f"{ts.inference_url}/predictions/fraud", json=row)

CLI (runs until SIGTERM/SIGINT; prints one JSON line with the URLs once ready):
    python -m model_handler.launcher serve --model-store DIR --model NAME=FILE.mar [--workers N] [--bind IP]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from model_handler.archive import ArchiveError, read_manifest

__all__ = ["ServedModel", "TorchServeError", "TorchServeProcess", "free_ports", "main"]

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <File name="ts_log" fileName="{log_dir}/ts_log.log">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
    </File>
    <File name="model_log" fileName="{log_dir}/model_log.log">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="{model_level}" additivity="false"><AppenderRef ref="model_log"/></Logger>
    <Root level="{level}"><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""
_WORKER_FAILURE_MARKERS = ("Load model failed", "Backend worker process died", "Failed to load model")


class StartInterrupted(Exception):
    """`start(interrupt=...)` saw its event set before TorchServe was ready (the CLI's SIGTERM/SIGINT).
    Checked between readiness polls, never raised from a signal handler: an exception there could
    land inside `subprocess.Popen` after the fork, leaving a TorchServe no one holds the pid of."""


class TorchServeError(RuntimeError):
    """TorchServe did not come up (or misbehaved); the message ends with the tail of its logs."""


@dataclass(frozen=True)
class ServedModel:
    """One model to load at start. `archive` is a file or directory name inside the model store."""

    name: str
    archive: str
    workers: int | None = None          # None: the server's default_workers_per_model
    batch_size: int = 1
    max_batch_delay_ms: int = 20
    response_timeout_s: int = 120

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "=" in self.name:
            raise ValueError(f"bad model name {self.name!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"model {self.name!r}: workers must be >= 1, got {self.workers}")
        if self.batch_size < 1 or self.max_batch_delay_ms < 0 or self.response_timeout_s < 1:
            raise ValueError(f"model {self.name!r}: batch_size >= 1, max_batch_delay_ms >= 0, response_timeout_s >= 1")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that were free a moment ago (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TorchServeProcess:
    """A local TorchServe instance; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        model_store: str | os.PathLike,
        models: Sequence[ServedModel] | Mapping[str, str],
        *,
        workers: int = 1,
        workdir: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        ports: Mapping[str, int] | None = None,
        log_level: str = "WARN",
        config: Mapping[str, str] | None = None,
        bind: str = "127.0.0.1",
    ) -> None:
        """`ports` may fix any of `inference`, `management`, `metrics` (0 or absent: a free port);
        `config` adds or overrides config.properties keys; `env` is added to the workers' environment;
        `bind` is the IPv4 address every listener (HTTP and gRPC) binds, e.g. a sandbox pod's IP."""
        self.model_store = Path(model_store).resolve()
        if not self.model_store.is_dir():
            raise TorchServeError(f"model store not found: {self.model_store}")
        if isinstance(models, Mapping):
            models = [ServedModel(name, archive) for name, archive in models.items()]
        self.models = list(models)
        if not self.models:
            raise ValueError("no models to serve")
        for model in self.models:
            if Path(model.archive).name != model.archive:
                raise TorchServeError(f"model {model.name!r}: archive {model.archive!r} must be a file or directory "
                                      f"name directly inside the model store {self.model_store}")
            if not (self.model_store / model.archive).exists():
                raise TorchServeError(f"model {model.name!r}: archive {model.archive!r} not found in {self.model_store}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.env = dict(env or {})
        self.fixed_ports = {k: v for k, v in (ports or {}).items() if v}
        unknown = set(self.fixed_ports) - {"inference", "management", "metrics"}
        if unknown:
            raise ValueError(f"unknown port names: {sorted(unknown)}")
        try:
            ipaddress.IPv4Address(bind)
        except ValueError:
            raise ValueError(f"bind address must be an IPv4 address, got {bind!r}") from None
        self.bind = bind
        self.log_level = log_level.upper()
        self.extra_config = dict(config or {})
        self._own_workdir = workdir is None
        self.workdir: Path | None = Path(workdir).resolve() if workdir else None  # own one: made at start
        self.process: subprocess.Popen | None = None
        self._console = None
        self._short_tmp: Path | None = None
        self._interrupt: threading.Event | None = None
        self.inference_url = self.management_url = self.metrics_url = ""

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Pid of the launcher process, which leads the process group of the JVM and its workers."""
        return self.process.pid if self.process else None

    def __enter__(self) -> TorchServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120.0, attempts: int = 3,
              interrupt: threading.Event | None = None) -> TorchServeProcess:
        """Start and wait until every model has its READY workers; retries if a port was taken.
        Once `interrupt` is set, stops what it started and raises StartInterrupted."""
        if self.process is not None:
            raise TorchServeError("already started")
        self._interrupt = interrupt
        for attempt in range(attempts):
            try:
                self._launch()
                self._wait_ready(timeout)
                return self
            except StartInterrupted:
                self.stop()
                raise
            except TorchServeError as exc:
                port_clash = "Address already in use" in str(exc) or "Failed to bind" in str(exc)
                retry = port_clash and attempt < attempts - 1 and not self.fixed_ports
                self.stop(remove_workdir=not retry)  # the error message already holds the log tail
                if not retry:
                    raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 30.0, remove_workdir: bool = True) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after `timeout`, reap, clean up."""
        if self.process is not None:
            group = self.process.pid
            _signal_group(group, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.05)
                self.process.poll()
            if _group_alive(group):
                _signal_group(group, signal.SIGKILL)
                while _group_alive(group) and time.monotonic() < deadline + 10:
                    time.sleep(0.05)
            self.process.wait()
            if self._console is not None:
                self._console.close()
                self._console = None
            self.process = None
        if self._short_tmp is not None:
            shutil.rmtree(self._short_tmp, ignore_errors=True)
            self._short_tmp = None
        if remove_workdir and self._own_workdir and self.workdir is not None and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def log_dir(self) -> Path | None:
        return self.workdir / "logs" if self.workdir else None

    # -- information ----------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        parts = []
        if self.log_dir is None:
            return "(not started)"
        for name in ("console.log", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"

    def describe(self, model: str, customized: bool = False) -> list[dict]:
        query = "?customized=true" if customized else ""
        return json.loads(self._get(f"{self.management_url}/models/{model}{query}"))

    def worker_pids(self, model: str) -> list[int]:
        return [w["pid"] for w in self.describe(model)[0]["workers"] if w.get("pid")]

    def group_pids(self) -> list[int]:
        """Every live process of this instance: launcher, JVM, Python workers."""
        return _group_members(self.process.pid) if self.process else []

    # -- internals ------------------------------------------------------------------------------
    def _launch(self) -> None:
        if self.workdir is None or (self._own_workdir and not self.workdir.exists()):
            self.workdir = Path(tempfile.mkdtemp(prefix="torchserve-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("console.log", "ts_log.log", "model_log.log"):  # from an earlier attempt
            (self.log_dir / stale).unlink(missing_ok=True)
        tmp = self.workdir / "tmp"
        if len(str(tmp)) > 80:  # worker unix sockets live in TMPDIR; their paths must stay < 108 bytes
            base = tempfile.gettempdir()
            if len(base) > 60:  # e.g. a sandbox pod's emptyDir deep in a work dir: the host's /tmp
                base = "/tmp"
            self._short_tmp = tmp = Path(tempfile.mkdtemp(prefix="ts-tmp-", dir=base))
        tmp.mkdir(parents=True, exist_ok=True)
        chosen = iter(free_ports(5, self.bind))
        port = {k: self.fixed_ports.get(k) or next(chosen) for k in ("inference", "management", "metrics")}
        grpc_inference, grpc_management = next(chosen), next(chosen)
        self.inference_url = f"http://{self.bind}:{port['inference']}"
        self.management_url = f"http://{self.bind}:{port['management']}"
        self.metrics_url = f"http://{self.bind}:{port['metrics']}"

        properties = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": self.bind,
            "grpc_inference_port": str(grpc_inference),
            "grpc_management_address": self.bind,
            "grpc_management_port": str(grpc_management),
            "model_store": str(self.model_store),
            "load_models": ",".join(f"{m.name}={m.archive}" for m in self.models),
            "models": json.dumps(self._models_config(), separators=(",", ":")),
            "default_workers_per_model": str(self.workers),
            "disable_token_authorization": "true",
            "enable_model_api": "true",
            "metrics_mode": "prometheus",
            "disable_system_metrics": "true",
            "model_metrics_auto_detect": "true",  # handlers' own metrics reach the Prometheus endpoint
            "enable_envvars_config": "false",
            **self.extra_config,
        }
        config_path = self.workdir / "config.properties"
        config_path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        log_config = self.workdir / "log4j2.xml"
        model_level = "info" if self.log_level in ("WARN", "ERROR", "OFF") else self.log_level.lower()
        log_config.write_text(_LOG4J2.format(log_dir=self.log_dir, level=self.log_level.lower(), model_level=model_level))

        env = {
            **os.environ,
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),  # becomes java.io.tmpdir: worker sockets and unpacked archives
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            **self.env,
        }
        cmd = [
            sys.executable, "-m", "ts.model_server", "--start", "--foreground",
            "--ts-config", str(config_path), "--model-store", str(self.model_store),
            "--log-config", str(log_config), "--ncs", "--disable-token-auth", "--enable-model-api",
        ]
        self._console = open(self.log_dir / "console.log", "ab")
        self.process = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=self._console, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _models_config(self) -> dict:
        config = {}
        for m in self.models:
            try:
                version = read_manifest(self.model_store / m.archive).get("model", {}).get("modelVersion", "1.0")
            except ArchiveError as exc:
                raise TorchServeError(f"model {m.name!r}: {exc}") from None
            workers = m.workers or self.workers
            config[m.name] = {version: {
                "defaultVersion": True, "marName": m.archive, "minWorkers": workers, "maxWorkers": workers,
                "batchSize": m.batch_size, "maxBatchDelay": m.max_batch_delay_ms,
                "responseTimeout": m.response_timeout_s,
            }}
        return config

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {m.name: (m.workers or self.workers) for m in self.models}
        pinged = False
        while True:
            if self._interrupt is not None and self._interrupt.is_set():
                raise StartInterrupted()
            if self.process.poll() is not None:
                self._fail(f"TorchServe exited with code {self.process.returncode} before it was ready")
            if time.monotonic() > deadline:
                self._fail(f"TorchServe not ready within {timeout:.0f}s (waiting for {sorted(pending) or 'ping'})")
            try:
                if not pinged:
                    pinged = json.loads(self._get(f"{self.inference_url}/ping", timeout=2)).get("status") == "Healthy"
                for name in list(pending):
                    workers = self.describe(name)[0].get("workers", [])
                    if sum(w.get("status") == "READY" for w in workers) >= pending[name]:
                        del pending[name]
                if pinged and not pending:
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and pinged:  # models load before the API opens: this one never will
                    self._fail(f"a model failed to register ({exc.read().decode(errors='replace')[:300]})")
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError, IndexError):
                pass
            logs = self.log_tail(200)
            if any(marker in logs for marker in _WORKER_FAILURE_MARKERS):
                self._fail("a model worker failed to load")
            time.sleep(0.2)

    def _fail(self, reason: str) -> None:
        errors = self._error_lines()
        summary = ("\nerrors:\n" + "\n".join(errors)) if errors else ""
        raise TorchServeError(f"{reason}{summary}\n{self.log_tail()}")

    def _error_lines(self, limit: int = 6) -> list[str]:
        """The lines that say what went wrong (exceptions, failed loads), without the stack frames."""
        found: list[str] = []
        if self.log_dir is None:
            return found
        for name in ("console.log", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                text = line.split(" - ", 1)[-1].strip() if " - " in line else line.strip()
                if any(w in text for w in ("Error", "Exception", "Failed", "failed")) and text not in found:
                    if not text.startswith(("File ", "^", "Traceback")):
                        found.append(text)
        return found[-limit:]

    @staticmethod
    def _get(url: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# -- CLI --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_handler.launcher")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run TorchServe in the foreground until SIGTERM/SIGINT")
    serve.add_argument("--model-store", required=True)
    serve.add_argument("--model", action="append", required=True, metavar="NAME=FILE",
                       help="a model to load from the store (repeatable)")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--batch-size", type=int, default=1)
    serve.add_argument("--max-batch-delay", type=int, default=20, help="milliseconds")
    serve.add_argument("--inference-port", type=int, default=0)
    serve.add_argument("--management-port", type=int, default=0)
    serve.add_argument("--metrics-port", type=int, default=0)
    serve.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                       help="IPv4 address to listen on (default 127.0.0.1; a sandbox pod passes its pod IP)")
    serve.add_argument("--workdir")
    serve.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="worker environment")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for READY workers")
    args = parser.parse_args(argv)

    try:
        models = []
        for item in args.model:
            name, sep, archive = item.partition("=")
            if not sep or not name or not archive:
                parser.error(f"--model must be NAME=FILE, got {item!r}")
            models.append(ServedModel(name, archive, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay))
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"--env must be KEY=VALUE, got {item!r}")
            env[key] = value
        server = TorchServeProcess(
            args.model_store, models, workers=args.workers, workdir=args.workdir, env=env,
            ports={"inference": args.inference_port, "management": args.management_port, "metrics": args.metrics_port},
            bind=args.bind,
        )
    except ValueError as exc:
        parser.error(str(exc))
    except TorchServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()   # while starting, start() notices it between polls and stops the server

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        server.start(timeout=args.timeout, interrupt=stop)
        print(json.dumps({"inference": server.inference_url, "management": server.management_url,
                          "metrics": server.metrics_url, "pid": server.pid, "logs": str(server.log_dir)}), flush=True)
        while not stop.is_set():
            if server.process.poll() is not None:
                print(f"error: TorchServe exited with code {server.process.returncode}\n{server.log_tail()}", file=sys.stderr)
                return 1
            stop.wait(0.5)
    except TorchServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StartInterrupted:
        print(f"interrupted by signal {received[0]} while starting", file=sys.stderr)
        return 128 + received[0]
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
