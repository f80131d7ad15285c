"""`make demo`: the whole self-healing loop, live, on the local sandbox with real processes.

What it shows: the example fraud model serves clean traffic well; the traffic drifts (amounts in
cents, distances in metres) and accuracy collapses; the operator detects the drift from the pods'
sketches alone, runs a label-free heal Job, passes the promotion gate and rolls the healed adapter out
pod by pod; accuracy recovers. Then a person rolls back to `base` with one `kubectl patch` (accuracy
drops again) and forward to the healed version (it recovers), with no failed request throughout.

How: it builds the model, then the local-cluster harness (`examples.cluster.SelfhealCluster`) starts
`python -m sandbox up --foreground` (API + process kubelet that runs TorchServe pods), applies the CRD
and starts the real operator (`python -m shm_operator`); the demo applies
`examples/fraud/selfhealingmodel.yaml` with fast settings, and sends bounded loopback traffic through
the Service (`sandbox.loadgen.LoadLoop`). Accuracy is scored with the data generator's labels, which
selfheal never sees. Status comes from the real `kubectl`.

    python -m examples.demo [--out out/] [--no-live] [--runtime podman]

With `--runtime podman` (`make demo-containers`) the pods and the heal Job run as podman containers
of the built images (`make images`), with the securityContext the operator writes (uid 10001,
read-only root, no capabilities); the model directory and the storage are shared into them.

Writes `<out>/demo.json` (headline figures) and `<out>/demo.png` (the accuracy timeline); exit code 0
only if the heal happened, healed accuracy >= 0.9 and the rollback and roll-forward were clean.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from examples.cluster import ClusterError, SelfhealCluster, fast_settings, serving
from examples.fraud.generator import World, labelled_rows
from sandbox import server as sandbox_server
from sandbox.loadgen import LoadLoop

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKDIR = REPO_ROOT / ".work" / "demo"
NAMESPACE = "demo"
COLLAPSE = World(amount_unit=100.0, distance_unit=1000.0)   # amounts in cents, distances in metres
# Fast settings so the loop reacts in seconds; one heal only (long cooldown).
FAST = fast_settings(cooldown_seconds=900)


class DemoFailed(RuntimeError):
    """A step of the demo did not happen in time; the message says which."""


def parse_time(value: str | None) -> float | None:
    """A Kubernetes timestamp as Unix seconds (None stays None)."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class StatusWatch:
    """Polls the SelfHealingModel and its events with kubectl in a thread; keeps the latest of each."""

    def __init__(self, cluster: SelfhealCluster):
        self.cluster = cluster
        self.status: dict = {}
        self.last_event = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "StatusWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(35)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            try:
                self.status = self.cluster.get("shm", "fraud").get("status") or {}
                if tick % 3 == 0:
                    self.last_event = self._newest_event()
            except (ClusterError, subprocess.TimeoutExpired, json.JSONDecodeError):
                pass
            tick += 1
            self._stop.wait(1.0)

    def _newest_event(self) -> str:
        items = self.cluster.get("events").get("items", [])
        stamp = lambda e: e.get("lastTimestamp") or e.get("eventTime") or e["metadata"].get("creationTimestamp") or ""
        if not items:
            return ""
        newest = max(items, key=stamp)
        return f"{newest.get('reason', '')}: {newest.get('message', '')}"[:90]

    def wait(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status
            if status and predicate(status):
                return status
            time.sleep(0.5)
        raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}; "
                         f"status: {json.dumps(self.status)[:1500]}")


class Display:
    """The live view: a rich table redrawn twice a second, or one plain line every 5 s."""

    def __init__(self, loop: LoadLoop, watch: StatusWatch, live: bool):
        self.loop, self.watch, self.live = loop, watch, live
        self.stage = "starting"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None

    def figures(self) -> dict:
        total = self.loop.summary(list(self.loop.answers))   # a snapshot: the clients keep appending
        recent = self.loop.summary(self.loop.window(5))
        status = self.watch.status
        return {"stage": self.stage, "requests": total["requests"], "failed": total["failed"],
                "accuracy": recent["accuracy"], "drift": (status.get("drift") or {}).get("score"),
                "phase": status.get("phase") or "-", "adapter": (status.get("adapter") or {}).get("current") or "(mixed)",
                "ready": (status.get("adapter") or {}).get("ready") or "-", "event": self.watch.last_event or "-"}

    def table(self):
        from rich.table import Table
        f = self.figures()
        table = Table(title="selfheal demo: fraud model on the sandbox", show_header=False, min_width=70)
        table.add_column(style="bold cyan")
        table.add_column()
        acc = "-" if f["accuracy"] is None else f"{f['accuracy']:.3f}"
        style = "green" if f["accuracy"] and f["accuracy"] >= 0.9 else "red"
        for key, value in [("stage", f["stage"]), ("requests served", f["requests"]),
                           ("failed requests", f["failed"]), ("accuracy (last 5 s)", f"[{style}]{acc}[/]"),
                           ("drift score", "-" if f["drift"] is None else f"{f['drift']:.2f}"),
                           ("phase", f["phase"]), ("adapter served", f"{f['adapter']} ({f['ready']} pods)"),
                           ("last event", f["event"])]:
            table.add_row(key, str(value))
        return table

    def line(self) -> str:
        f = self.figures()
        acc = "-" if f["accuracy"] is None else f"{f['accuracy']:.3f}"
        drift = "-" if f["drift"] is None else f"{f['drift']:.2f}"
        return (f"[{f['stage']}] requests {f['requests']} failed {f['failed']} acc5s {acc} drift {drift} "
                f"phase {f['phase']} adapter {f['adapter']} ({f['ready']}) | {f['event']}")

    def start(self) -> "Display":
        if self.live:
            from rich.live import Live
            self._live = Live(get_renderable=self.table, refresh_per_second=2)
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._print_lines, daemon=True)
            self._thread.start()
        return self

    def _print_lines(self) -> None:
        while not self._stop.wait(5.0):
            print(self.line(), flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._live:
            self._live.stop()
        if self._thread:
            self._thread.join(10)


MARKER = ".selfheal-demo"   # only a directory holding this file is ever emptied by the demo


def prepare_workdir(workdir: Path) -> None:
    """Remove a previous run's leftovers: stop its sandbox if one still runs, then empty the dir."""
    ours = workdir == WORKDIR or (workdir / MARKER).exists()
    if workdir.exists() and any(workdir.iterdir()) and not ours:
        raise DemoFailed(f"{workdir} is not empty and was not made by the demo; pick another --workdir")
    state = sandbox_server.read_state(workdir / "sandbox") if (workdir / "sandbox").exists() else None
    if state and state.get("pid"):
        subprocess.run([sys.executable, "-m", "sandbox", "down", "--workdir", str(workdir / "sandbox")],
                       capture_output=True, timeout=60)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / MARKER).touch()


def run_scenario(cluster: SelfhealCluster, watch: StatusWatch, loop_box: dict, display_box: dict, live: bool) -> dict:
    """The story, step by step; returns the measured figures and the timeline (seconds since traffic began)."""
    from examples.fraud.train import build_served
    print("building the example fraud model ...", flush=True)
    model_dir = build_served(cluster.workdir / "models" / "store", rows=16000, seed=0)
    storage = cluster.workdir / "storage"
    storage.mkdir()
    if cluster.runtime == "podman":  # network storage, as far as the containers are concerned
        cluster.shared = (cluster.workdir / "models", storage)
    print("starting the sandbox and the operator ...", flush=True)
    image = model_server_image() if cluster.runtime == "podman" else None   # checked before anything starts
    try:
        cluster.start()
    except RuntimeError as err:
        raise DemoFailed(f"the sandbox did not start: {err}") from err
    cluster.start_operator("--verbose")
    body = cluster.example_model("fraud", model_dir, storage, **FAST)
    if image:
        body["spec"]["model"]["image"] = image
    cluster.apply(body)
    watch.start()
    print("waiting for 2 TorchServe pods serving adapter base ...", flush=True)
    watch.wait(serving("base"), 180, "2 ready pods serving base")
    service = cluster.get("service", "fraud-serving")
    url = f"http://{service['spec']['clusterIP']}:8080/predictions/fraud"

    loop = LoadLoop(url, labelled_rows(World(), 1), clients=2, max_seconds=400)
    loop_box["loop"] = loop
    t0_wall = time.time()
    loop.start()
    display = Display(loop, watch, live).start()
    display_box["display"] = display
    marks: dict[str, float] = {}
    now = lambda: time.monotonic() - loop._started
    windows: dict[str, tuple[float, float]] = {}

    display.stage = "clean traffic"
    time.sleep(20)
    windows["clean"] = (now() - 15, now())
    display.stage = "drifted traffic (amounts in cents, distances in metres)"
    loop.retarget(labelled_rows(COLLAPSE, 2))
    marks["drift onset"] = now()
    status = watch.wait(lambda s: (s.get("lastHeal") or {}).get("result") == "Running", 150, "a heal Job")
    display.stage = "healing Job running"
    windows["drifted"] = (marks["drift onset"] + 2, now())
    status = watch.wait(lambda s: (s.get("lastHeal") or {}).get("result") not in (None, "Running"), 180,
                        "the heal Job's result")
    heal = status["lastHeal"]
    if heal["result"] != "Promoted":
        raise DemoFailed(f"the heal ended {heal['result']}: {heal.get('reason')}")
    healed_version = heal["version"]
    display.stage = f"rolling out {healed_version}"
    status = watch.wait(serving(healed_version), 180, f"all pods on {healed_version}")
    healed_wall = time.time()
    marks["rollout done"] = now()
    drift_since = parse_time((status.get("drift") or {}).get("since")) or parse_time(heal.get("started"))
    marks["drift detected"] = drift_since - t0_wall
    marks["Job start"] = parse_time(heal.get("started")) - t0_wall
    marks["Job end"] = (parse_time(heal.get("finished")) or healed_wall) - t0_wall
    display.stage = f"healed: serving {healed_version}"
    time.sleep(10)
    windows["healed"] = (now() - 8, now())

    patched_ok = []
    for label, mark, version in (("rolled back", "rollback", "base"),
                                 ("rolled forward", "roll-forward", healed_version)):
        display.stage = f"kubectl patch: {mark} to {version}"
        marks[mark] = now()
        cluster.patch_version("fraud", version)
        watch.wait(serving(version), 180, f"2/2 pods on {version}")
        patched_ok.append(True)
        display.stage = f"{label}: serving {version}"
        time.sleep(8)
        windows[label] = (now() - 6, now())
    rollback_failed = loop.summary([a for a in loop.answers if a.at >= marks["rollback"]])["failed"]
    display.stage = "done"
    loop.stop()
    display.stop()
    return {"loop": loop, "marks": marks, "windows": windows, "healed_version": healed_version,
            "time_to_heal_s": healed_wall - drift_since, "history": watch.status.get("history") or [],
            "rollback_ok": len(patched_ok) == 2 and rollback_failed == 0, "storage": storage}


def phase_figures(loop: LoadLoop, windows: dict) -> dict:
    out = {}
    for name, (start, end) in windows.items():
        out[name] = loop.summary([a for a in loop.answers if start <= a.at < end])
    return out


def plot(loop: LoadLoop, marks: dict, path: Path) -> None:
    """Accuracy per second (top) and requests answered per second (bottom), with the story's markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    answers = list(loop.answers)
    scored = [a for a in answers if a.ok and a.correct is not None]
    seconds = np.array([int(a.at) for a in scored], dtype=int)
    correct = np.array([a.correct for a in scored], dtype=float)
    span = int(max((a.at for a in answers), default=0)) + 1
    counts = np.bincount(seconds, minlength=span)
    hits = np.bincount(seconds, weights=correct, minlength=span)
    served = counts > 0
    fig, (ax, rate) = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(np.arange(span)[served], hits[served] / counts[served], color="black", lw=1.2,
            label="live accuracy (per second)")
    rate.fill_between(np.arange(span), np.bincount([int(a.at) for a in answers], minlength=span)[:span],
                      step="post", color="tab:gray", alpha=0.6)
    colors = {"drift onset": "tab:red", "drift detected": "tab:orange", "Job start": "tab:purple",
              "Job end": "tab:blue", "rollout done": "tab:green", "rollback": "tab:brown",
              "roll-forward": "tab:olive"}
    for row, (name, at) in enumerate(sorted(marks.items(), key=lambda item: item[1])):
        for axes in (ax, rate):
            axes.axvline(at, color=colors.get(name, "grey"), ls="--", lw=1,
                         label=f"{name} (+{at:.0f}s)" if axes is ax else None)
        ax.text(at + 0.4, 0.62 - 0.08 * (row % 4), name, color=colors.get(name, "grey"), fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy\n(generator labels)")
    rate.set_ylabel("requests/s")
    rate.set_xlabel("seconds since traffic began")
    ax.set_title("selfheal demo: drift -> label-free heal -> rollout -> kubectl rollback / roll-forward")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict, out: Path) -> int:
    from rich.console import Console
    from rich.table import Table
    loop = result["loop"]
    figures = phase_figures(loop, result["windows"])
    total = loop.summary()
    table = Table(title="selfheal demo: summary (labels used by selfheal: 0)")
    for column in ("phase", "accuracy", "requests", "failed", "labels used"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name in ("clean", "drifted", "healed", "rolled back", "rolled forward"):
        f = figures[name]
        table.add_row(name, "-" if f["accuracy"] is None else f"{f['accuracy']:.3f}", str(f["requests"]),
                      str(f["failed"]), "0")
    table.add_row("total", "", str(total["requests"]), str(total["failed"]), "0", style="bold")
    console = Console()
    console.print(table)
    console.print(f"time to heal (drift detected -> all pods on {result['healed_version']}): "
                  f"{result['time_to_heal_s']:.1f}s; rollback ok: {result['rollback_ok']}")
    console.print("adapter history: " + " -> ".join(f"{h.get('version')} (by {h.get('by')})"
                                                      for h in result["history"]))
    from model_handler.registry import AdapterRegistry
    labels_used = AdapterRegistry(result["storage"].as_uri(), NAMESPACE, "fraud").meta(result["healed_version"]).labels_used
    summary = {"clean_accuracy": figures["clean"]["accuracy"], "drifted_accuracy": figures["drifted"]["accuracy"],
               "healed_accuracy": figures["healed"]["accuracy"], "labels_used": labels_used,
               "requests": total["requests"], "failed_requests": total["failed"],
               "time_to_heal_s": round(result["time_to_heal_s"], 1), "rollback_ok": result["rollback_ok"]}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(loop, result["marks"], out / "demo.png")
    console.print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    problems = []
    if (summary["healed_accuracy"] or 0) < 0.9:
        problems.append(f"healed accuracy {summary['healed_accuracy']} < 0.9")
    if not summary["rollback_ok"]:
        problems.append("the rollback or roll-forward did not reach 2/2 pods with 0 failed requests")
    if labels_used != 0:
        problems.append(f"the heal used {labels_used} labels")
    for problem in problems:
        console.print(f"[red]FAILED:[/] {problem}")
    return 1 if problems else 0


def model_server_image() -> str:
    """The model-server image `make images` built (checked before anything starts)."""
    from sandbox.podman import podman
    image = os.environ.get("MODEL_SERVER_IMAGE") or f"ghcr.io/selfheal/model-server:{os.environ.get('SELFHEAL_IMAGE_TAG', '0.1.0')}"
    try:
        found = podman("image", "exists", image, check=False).returncode == 0
    except (RuntimeError, OSError) as err:
        raise DemoFailed(f"podman is not set up here ({err}); run `make images` first") from err
    if not found:
        raise DemoFailed(f"image {image} not found in podman's storage; run `make images` first")
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="where demo.json and demo.png go")
    parser.add_argument("--no-live", action="store_true", help="plain progress lines instead of a live table")
    parser.add_argument("--workdir", type=Path, default=WORKDIR,
                        help="model, storage, sandbox and logs; emptied first (default: .work/demo)")
    parser.add_argument("--runtime", choices=("process", "podman"), default="process",
                        help="pods and Jobs as local processes (default) or as podman containers of the images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    live = not args.no_live and sys.stdout.isatty()

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)   # also where a background shell started us with SIGINT ignored

    began = time.monotonic()
    workdir = args.workdir.resolve()
    try:
        prepare_workdir(workdir)
    except DemoFailed as err:
        print(f"demo FAILED: {err}", file=sys.stderr)
        return 1
    cluster = SelfhealCluster(workdir, namespace=NAMESPACE, runtime=args.runtime)
    watch = StatusWatch(cluster)
    loop_box: dict = {}
    display_box: dict = {}
    try:
        result = run_scenario(cluster, watch, loop_box, display_box, live)
    except (DemoFailed, ClusterError) as err:
        print(f"demo FAILED: {err}\nlogs: {workdir}/operator.log, {cluster.sandbox_dir}/api.log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:   # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if "display" in display_box:
            display_box["display"].stop()
        if "loop" in loop_box:
            loop_box["loop"].stop()
        watch.stop()
        cluster.stop()
    code = report(result, args.out)
    print(f"demo finished in {time.monotonic() - began:.0f}s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
