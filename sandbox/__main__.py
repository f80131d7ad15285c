"""`python -m sandbox up|down|status`: start or stop the local Kubernetes sandbox.

    python -m sandbox up                 # background; prints `export KUBECONFIG=...`
    python -m sandbox up --foreground    # serve in this process until Ctrl-C / SIGTERM
    python -m sandbox down               # stop what `up` started
    python -m sandbox up --foreground --no-node --persist --port P   # the API alone, restartable
    python -m sandbox node               # its node agents (pods, Jobs, Services), in the foreground
    python -m sandbox up --fake-pods sandbox.fakepods:healthy   # pods faked in process (scale tests)
    python -m sandbox up --runtime podman --share /srv/models    # pods and Jobs as podman containers
                                         # of their images (`make images` first; sandbox/containers.py)
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sandbox import server

DEFAULT_WORKDIR = Path(".work") / "sandbox"
START_TIMEOUT_S = 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _print_ready(state: dict) -> None:
    print(f"sandbox API at {state['url']} (pid {state['pid']})", file=sys.stderr)
    print(f"export KUBECONFIG={state['kubeconfig']}", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    state = server.read_state(workdir)
    if state and _alive(state["pid"]):
        print(f"error: a sandbox already runs for {workdir} (pid {state['pid']}); "
              f"run `python -m sandbox down --workdir {workdir}` first", file=sys.stderr)
        return 1
    try:  # a bad runtime choice is reported here, before anything starts
        server.node_agents(args.fake_pods, args.runtime, args.share) if not args.no_node else None
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.foreground:
        server.run_foreground(workdir, args.port, on_ready=_print_ready, persist=args.persist, node=not args.no_node,
                              fake_pods=args.fake_pods, runtime=args.runtime, shared=args.share)
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    server.state_path(workdir).unlink(missing_ok=True)
    log_path = workdir / "sandbox.log"
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "up", "--foreground", "--workdir", str(workdir),
             "--port", str(args.port), *(["--persist"] if args.persist else []),
             *(["--no-node"] if args.no_node else []),
             *(["--fake-pods", args.fake_pods] if args.fake_pods else []),
             "--runtime", args.runtime, *[a for path in args.share for a in ("--share", str(path))]],
            stdout=subprocess.DEVNULL, stderr=log_file, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = server.read_state(workdir)
        if state and state.get("pid") == child.pid:
            _print_ready(state)
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.1)
    if child.poll() is None:
        child.terminate()
    print(f"error: the sandbox did not start within {START_TIMEOUT_S:.0f}s; see {log_path}", file=sys.stderr)
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    state = server.read_state(workdir)
    if not state or not _alive(state["pid"]):
        server.state_path(workdir).unlink(missing_ok=True)
        print(f"no sandbox runs for {workdir}", file=sys.stderr)
        return 0
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(state["pid"]):
        os.kill(state["pid"], signal.SIGKILL)
    server.state_path(workdir).unlink(missing_ok=True)
    print(f"stopped the sandbox (pid {state['pid']})", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = server.read_state(args.workdir.resolve())
    if state and _alive(state["pid"]):
        _print_ready(state)
        return 0
    print("not running", file=sys.stderr)
    return 1


def cmd_node(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    state = server.read_state(workdir)
    if not state or not _alive(state["pid"]):
        print(f"error: no sandbox API runs for {workdir}; start one with `up --no-node` first", file=sys.stderr)
        return 1
    try:
        server.node_agents(None, args.runtime, args.share)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server.run_node_foreground(workdir, state["url"],
                               on_ready=lambda s: print(f"node agents for {s['url']} (pid {s['pid']})",
                                                        file=sys.stderr),
                               runtime=args.runtime, shared=args.share)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="The local Kubernetes sandbox.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("up", cmd_up, "start the sandbox"), ("down", cmd_down, "stop it"),
                             ("status", cmd_status, "print its KUBECONFIG if it runs"),
                             ("node", cmd_node, "run only the node agents (pods, Jobs, Services) in the "
                                                "foreground, for an API started with --no-node")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                         help=f"state, kubeconfig and logs (default: {DEFAULT_WORKDIR})")
        cmd.set_defaults(func=func)
        if name in ("up", "node"):
            cmd.add_argument("--runtime", choices=("process", "podman"), default="process",
                             help="how pods and Jobs run: local processes (default) or podman containers of "
                                  "their images, with their securityContext, volumes, env and ports")
            cmd.add_argument("--share", action="append", type=Path, default=[], metavar="DIR",
                             help="with --runtime podman: a directory mounted read-write into every pod and "
                                  "Job at the same path (model archives, file:// storage); repeatable")
        if name == "up":
            cmd.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (default: a free one)")
            cmd.add_argument("--foreground", action="store_true", help="serve in this process")
            cmd.add_argument("--persist", action="store_true",
                             help="keep objects across restarts in <workdir>/state.json (default: in memory)")
            cmd.add_argument("--no-node", action="store_true",
                             help="serve only the API; run `python -m sandbox node` beside it, so the API "
                                  "can restart while pods keep serving")
            cmd.add_argument("--fake-pods", metavar="MODULE:FACTORY",
                             help="fake Deployment pods in process, answered by this app (sandbox/fakepods.py; "
                                  "scale tests only); default: every pod is a real process")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
