"""The scale benchmark: one real operator process reconciling N SelfHealingModels on the sandbox.

    python -m bench.scale --json out/scale.json                 # N = 25, 50, 100, 250, 500, 1000
    python -m bench.scale --models 200 --json out/scale.json    # N = 25, 50, 100, 200 (up to --models)
    python -m bench.scale --quick --json out/scale-quick.json   # N = 3, 6, 2 s checks, about two minutes

Why fake pods: 200 TorchServe pods (a JVM and Python workers each) do not fit on a laptop, and the
operator never sees a pod's process anyway, only its drift status over HTTP. So the sandbox runs with
`--fake-pods bench.scale:fake_pods` (`sandbox/fakepods.py`): Deployments, ReplicaSets, Pod objects,
pod IPs, readiness and Services stay real; each pod's management port answers TorchServe's describe
call with a real handler status. That status is built with the real ML core: a `ModelService` loaded
from a trained fraud archive serves generated rows (`examples/fraud/generator.py`), and its sketches
are what the fake pods ship. Each describe answer counts one more batch of `windowRows` rows, as if
that much traffic had been served since the last poll, so the operator scores one full window per
check, as it would under steady traffic. A model's mode lives in
`<workdir>/fake-pods/modes/<namespace>/<model>`: `clean` (in-distribution rows, several different
batches in turn), `drifted` (amounts in cents, distances in metres) or `idle` (no new rows); without
that file, the fleet's mode in `<workdir>/fake-pods/modes/ALL`.

The cluster is the shared harness (`examples.cluster.SelfhealCluster`: the sandbox API with the fake
pods' kubelet, the CRD, the namespace, the operator process). Protocol, for each N (models are added,
the sandbox and operator keep running):
1. every model busy (clean traffic); create models up to N (replicas 1, the example's spec,
   `checkIntervalSeconds` from --interval), wait until each has a ready pod and scored a window, and
   one more interval;
2. busy window, over --window seconds: API requests by client/verb/resource (the emulator's counter,
   `GET /debug/requests`, which names the operator's clients apart from ours), the operator's RSS
   (VmRSS, /proc/<pid>/status, the highest sample) and CPU seconds, errors in its log;
3. every model idle (its pods answer but served nothing new), one interval, then the idle window, the
   same figures: what a model costs when nothing happens to it;
4. switch one model's pods to `drifted` and time (a) `DriftDetected=True` in its status and (b) its
   heal Job's creation, polling every 0.5 s; then switch it back. Both include waiting for the
   checks (`persistence` drifted windows, one per check), so (c) "lag" is the operator's own
   delay: from the pod's describe answer that completed the deciding window to DriftDetected.
   Healing mode stays `Auto` (the example's): the Job is what is timed; it then fails for want of
   sampled traffic, which is fine.
A run's top-level `api`/`operator`/`sandbox` figures are the busy window's; `idle` holds the idle one's.

The sandbox (API + kubelets + fake pods) shares the machine's cores with the operator: the load
average is recorded with every window, and the sandbox's own CPU is reported beside the operator's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from examples.cluster import EXAMPLE_CR as EXAMPLE
from examples.cluster import SelfhealCluster, condition
from sandbox.cluster import cpu_seconds, interruptible, rss_mib, uninterruptible, wait

STATUS_FILE = "fake-pods.json"
MODES_DIR = Path("fake-pods") / "modes"
FLEET = "ALL"        # <MODES_DIR>/ALL: the mode of every model without its own file
SIZES = (25, 50, 100, 250, 500, 1000)   # the default Ns, up to --models
PHASES = ("busy", "idle")   # what every model's pods serve while a window is measured
SERVED_DIR = Path("fake-pods") / "drifted-answers"   # when each drifted describe answer went out
OPERATOR_CLIENTS = ("kopf", "selfheal-operator")   # Kopf's own session, shm_operator.k8s's
BENCH_AGENT = "selfheal-bench"
CLEAN_BATCHES = 4
PERSISTENCE = 2      # spec.drift.persistence of the example: drifted windows before DriftDetected


# ---- fake pods: statuses built with the real ML core ---------------------------------------------

def build_statuses(model_dir: Path, rows: int, seed: int = 0) -> dict:
    """Describe-answer template and per-batch sketch increments (clean and drifted) of the archive."""
    from examples.fraud.generator import World, sample
    from model_handler.service import ModelService, ServiceConfig
    from model_handler.sketches import DriftSketch

    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fake"))
    rng = np.random.default_rng(seed)
    increments: dict[str, list[dict]] = {"clean": [], "drifted": []}
    worlds = {"clean": World(), "drifted": World(amount_unit=100.0, distance_unit=1000.0)}
    for mode, batches in (("clean", CLEAN_BATCHES), ("drifted", 1)):
        for _ in range(batches):
            before = DriftSketch.from_dict(service.sketch.to_dict(), service.reference)
            service.predict({"instances": sample(rng, rows, worlds[mode]).x.tolist()})
            increments[mode].append((service.sketch - before).to_dict())
    template = service.pod_status()
    template.pop("scores", None)   # the pod's own view; the operator scores windows itself
    return {"template": template, "increments": increments}


class FraudPods:
    """The fake pods' app (see `sandbox.fakepods`): /ping, and the describe answer whose cumulative
    sketch grows by one batch of the model's current mode per answer."""

    def __init__(self, workdir: Path):
        from model_handler.sketches import DriftSketch, ReferenceProfile
        data = json.loads((workdir / STATUS_FILE).read_text())
        self.template, self.default_mode = data["template"], data.get("default_mode", "clean")
        self.reference = ReferenceProfile.from_dict(self.template["reference"])
        self.increments = {mode: [DriftSketch.from_dict(s, self.reference) for s in sketches]
                           for mode, sketches in data["increments"].items()}
        self.empty = self.increments["clean"][0] - self.increments["clean"][0]
        self.modes = workdir / MODES_DIR
        self.served = workdir / SERVED_DIR
        self.state: dict[str, list] = {}   # pod uid -> [cumulative sketch, answers]

    def mode(self, pod) -> str:
        """The model's own mode file, else the fleet's (`modes/ALL`), else the default."""
        meta = pod.pod["metadata"]
        model = pod.env.get("SELFHEAL_MODEL_NAME", "")
        for path in (self.modes / meta["namespace"] / model, self.modes / FLEET):
            try:
                return path.read_text().strip() or self.default_mode
            except OSError:
                continue
        return self.default_mode

    def handle(self, pod, port: str, method: str, path: str, query: Mapping[str, str]):
        if path == "/ping":
            return 200, {"status": "Healthy"}
        if port != "management" or not path.startswith("/models/"):
            return 404, {"code": 404, "message": f"fake pod: nothing at {path}"}
        state = self.state.setdefault(pod.uid, [self.empty, 0])
        mode = self.mode(pod)
        if mode == "drifted":
            record = self.served / pod.pod["metadata"]["namespace"] / pod.env.get("SELFHEAL_MODEL_NAME", "")
            record.parent.mkdir(parents=True, exist_ok=True)
            with open(record, "a") as f:
                f.write(f"{time.time()}\n")
        if mode != "idle":
            batches = self.increments[mode]
            state[0] = state[0] + batches[state[1] % len(batches)]
            state[1] += 1
        sketch = state[0]
        status = {**self.template, "sketch": sketch.to_dict(), "samples": sketch.n, "rows": sketch.n,
                  "requests": state[1]}
        return 200, [{"modelName": path.split("/")[2], "modelVersion": "1.0", "runtime": "python",
                      "customizedMetadata": json.dumps(status, separators=(",", ":"))}]


def fake_pods(workdir: Path) -> FraudPods:
    """Factory for `python -m sandbox up --fake-pods bench.scale:fake_pods`."""
    return FraudPods(Path(workdir))


def set_mode(workdir: Path, namespace: str | None, model: str | None, mode: str | None) -> None:
    """Set one model's mode (`mode=None`: back to the fleet's), or with `model=None` the fleet's."""
    path = workdir / MODES_DIR / FLEET if model is None else workdir / MODES_DIR / namespace / model
    if mode is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(mode)
    tmp.replace(path)


# ---- a tiny API client (its requests are counted apart from the operator's) ----------------------

class Api:
    def __init__(self, url: str):
        self.url = url

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "User-Agent": f"{BENCH_AGENT}/1"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {path}: {err.code} {err.read()[:300]!r}") from None

    def counts(self) -> dict[tuple[str, str, str], int]:
        return {(c["client"], c["verb"], c["resource"]): c["count"]
                for c in self.request("GET", "/debug/requests")["counts"]}


SHM = "/apis/selfheal.io/v1alpha1/namespaces/{ns}/selfhealingmodels"


def model_cr(name: str, model_dir: Path, storage: Path, interval: int, window_rows: int) -> dict:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name}
    spec = body["spec"]
    spec["model"]["archive"] = str(model_dir)
    spec["storage"] = {"uri": storage.as_uri()}
    spec["replicas"] = 1
    spec["serving"] = {"workers": 1}
    spec["drift"].update(checkIntervalSeconds=interval, windowRows=window_rows,
                         minSamples=min(200, window_rows), persistence=PERSISTENCE)
    spec["promotion"]["rollback"]["watchSeconds"] = max(spec["promotion"]["rollback"]["watchSeconds"], interval)
    return body




# ---- process figures ------------------------------------------------------------------------------

ERROR_LINE = re.compile(r"\[(ERROR|CRITICAL)\s*\]")
WARNING_LINE = re.compile(r"\[WARNING\s*\]")


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (per model), None with fewer than two points."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


# ---- the run ------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.namespace = "scale"
        self.created: list[str] = []
        self.drifted: list[str] = []
        self.cluster: SelfhealCluster | None = None
        self.operator = None

    def log(self, text: str) -> None:
        print(f"[scale +{time.monotonic() - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    def start(self) -> None:
        from examples.fraud.train import build_served
        self.t0 = time.monotonic()
        self.model_dir = build_served(self.workdir / "models" / "store", rows=4000, seed=0)
        statuses = build_statuses(self.model_dir, self.args.window_rows)
        statuses["default_mode"] = "clean"
        self.cluster = SelfhealCluster(self.workdir, namespace=self.namespace, fake_pods="bench.scale:fake_pods")
        self.box_dir = self.cluster.sandbox_dir     # the fake pods' app reads its files from here
        self.box_dir.mkdir(parents=True, exist_ok=True)
        (self.box_dir / STATUS_FILE).write_text(json.dumps(statuses))
        self.storage = self.workdir / "storage"
        self.storage.mkdir(exist_ok=True)
        self.log(f"model trained, fake statuses built ({self.args.window_rows} rows a batch)")
        self.cluster.start()     # the API with its fake-pod kubelet, the CRD Established, the namespace
        self.api = Api(self.cluster.url)
        self.sandbox_pid = self.cluster.api_pid
        self.operator = self.cluster.start_operator(env={"SELFHEAL_METRICS_PORT": "0"}, cwd=self.workdir)
        self.operator_log = self.operator.log_path
        self.log(f"sandbox pid {self.sandbox_pid}, operator pid {self.operator.pid}")

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.5):
        return wait(predicate, timeout, what, interval, alive=self.operator.check_alive if self.operator else None)

    def models(self) -> list[dict]:
        return self.api.request("GET", SHM.format(ns=self.namespace))["items"]

    def grow_to(self, n: int) -> None:
        started = time.monotonic()
        while len(self.created) < n:
            name = f"m-{len(self.created):03d}"
            self.api.request("POST", SHM.format(ns=self.namespace),
                             model_cr(name, self.model_dir, self.storage, self.args.interval, self.args.window_rows))
            self.created.append(name)

        def settled():
            items = self.models()
            done = [m for m in items if ((m.get("status") or {}).get("adapter") or {}).get("ready") == "1/1"
                    and ((m["status"].get("drift") or {}).get("samples"))]
            return len(done) == n
        self.wait(settled, 120 + 6 * self.args.interval + n, f"{n} models ready and scored", interval=2.0)
        self.log(f"{n} models ready and scored after {time.monotonic() - started:.0f}s; settling one interval")
        time.sleep(self.args.interval + 2)

    def switch(self, phase: str) -> None:
        """Every model's pods serve clean traffic (`busy`) or none (`idle`); wait one check interval so
        that every model has been checked in the new phase before a window starts."""
        set_mode(self.box_dir, None, None, "clean" if phase == "busy" else "idle")
        time.sleep(self.args.interval + 2)

    def measure(self, n: int, phase: str) -> dict:
        self.operator.check_alive()
        pid = self.operator.pid
        log_from = self.operator_log.stat().st_size
        counts0, cpu0, box0, load0 = self.api.counts(), cpu_seconds(pid), cpu_seconds(self.sandbox_pid), os.getloadavg()
        t0 = time.monotonic()
        rss_samples = []
        while time.monotonic() - t0 < self.args.window:
            rss_samples.append(rss_mib(pid))
            time.sleep(min(5.0, max(0.1, self.args.window - (time.monotonic() - t0))))
        elapsed = time.monotonic() - t0
        counts1, cpu1, box1, load1 = self.api.counts(), cpu_seconds(pid), cpu_seconds(self.sandbox_pid), os.getloadavg()
        with open(self.operator_log, "rb") as f:
            f.seek(log_from)
            new_log = f.read().decode(errors="replace")
        minutes = elapsed / 60
        delta = {k: v - counts0.get(k, 0) for k, v in counts1.items() if v - counts0.get(k, 0) > 0}
        by_kind: dict[str, float] = {}
        by_client: dict[str, float] = {}
        for (client, verb, resource), count in delta.items():
            by_client[client] = by_client.get(client, 0) + count / minutes
            if client in OPERATOR_CLIENTS:
                kind = f"{verb} {resource}"
                by_kind[kind] = by_kind.get(kind, 0) + count / minutes
        operator_total = sum(by_kind.values())
        return {
            "models": n, "phase": phase, "window_s": round(elapsed, 1),
            "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in load1],
            "api": {"operator_per_min": round(operator_total, 1),
                    "operator_per_model_per_min": round(operator_total / n, 2),
                    "operator_by_kind_per_min": {k: round(v, 1) for k, v in
                                                 sorted(by_kind.items(), key=lambda kv: -kv[1])},
                    "all_clients_per_min": {k: round(v, 1) for k, v in sorted(by_client.items())}},
            "operator": {"rss_mib": round(max(rss_samples), 1), "rss_mib_end": round(rss_mib(pid), 1),
                         "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / elapsed, 1),
                         "log_errors": len(ERROR_LINE.findall(new_log)),
                         "log_warnings": len(WARNING_LINE.findall(new_log))},
            "sandbox": {"rss_mib": round(rss_mib(self.sandbox_pid), 1),
                        "cpu_percent_of_one_core": round(100 * (box1 - box0) / elapsed, 1)},
        }

    def react(self) -> dict:
        name = next(m for m in self.created if m not in self.drifted)
        self.drifted.append(name)
        jobs = f"/apis/batch/v1/namespaces/{self.namespace}/jobs?labelSelector=selfheal.io/model%3D{name}"
        set_mode(self.box_dir, self.namespace, name, "drifted")
        t0 = time.monotonic()
        result: dict[str, Any] = {"model": name, "drift_detected_s": None, "job_created_s": None,
                                  "after_deciding_answer_s": None}
        deadline = t0 + 6 * self.args.interval + 60
        detected_at = None
        while time.monotonic() < deadline and None in (result["drift_detected_s"], result["job_created_s"]):
            if result["drift_detected_s"] is None:
                obj = self.api.request("GET", f"{SHM.format(ns=self.namespace)}/{name}")
                if condition(obj.get("status") or {}, "DriftDetected").get("status") == "True":
                    result["drift_detected_s"] = round(time.monotonic() - t0, 1)
                    detected_at = time.time()
            if result["job_created_s"] is None and self.api.request("GET", jobs)["items"]:
                result["job_created_s"] = round(time.monotonic() - t0, 1)
            time.sleep(0.5)
        set_mode(self.box_dir, self.namespace, name, None)   # back to the fleet's mode
        # The check phase is luck (0..interval); the operator's own delay is from the pod's answer that
        # completed `persistence` drifted windows to DriftDetected (0.5 s polling included).
        try:
            answers = [float(x) for x in (self.box_dir / SERVED_DIR / self.namespace / name).read_text().split()]
        except OSError:
            answers = []
        if detected_at is not None and len(answers) >= PERSISTENCE:
            result["after_deciding_answer_s"] = round(detected_at - answers[PERSISTENCE - 1], 2)
        return result

    def jobs_by_model(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for job in self.api.request("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs")["items"]:
            model = (job["metadata"].get("labels") or {}).get("selfheal.io/model", "?")
            found[model] = found.get(model, 0) + 1
        return found

    def run(self) -> dict:
        runs: list[dict] = []
        for n in self.args.sizes:
            self.switch("busy")
            self.grow_to(n)
            figures = self.measure(n, "busy")      # the run's top-level figures are the busy window's
            self.switch("idle")
            figures["idle"] = self.measure(n, "idle")
            figures["reaction"] = self.react()     # one model drifts while the others are idle
            runs.append(figures)
            self.log(f"N={n}: {row(figures)}")
            if self.args.json and n != self.args.sizes[-1]:   # a larger N that fails keeps these
                write_json(self.args.json, {**self.result(runs), "complete": False})
        return {**self.result(runs), "complete": True}

    def result(self, runs: list[dict]) -> dict:
        jobs = self.jobs_by_model()
        return {
            "config": {"sizes": self.args.sizes, "check_interval_s": self.args.interval,
                       "window_s": self.args.window, "window_rows": self.args.window_rows,
                       "phases": list(PHASES), "replicas": 1, "healing_mode": "Auto",
                       "persistence": PERSISTENCE, "cpus": os.cpu_count()},
            "runs": runs,
            "jobs_by_model": jobs,
            "drifted_models": list(self.drifted),
            "idle_models_with_jobs": sorted(m for m in jobs if m not in self.drifted),
            "growth_per_model": growth(runs),
        }


def growth(runs: list[dict]) -> dict:
    """Least-squares slopes over N: what one more model costs (busy; `idle_*` with no traffic)."""
    ns = [r["models"] for r in runs]
    idle = [r.get("idle") or r for r in runs]
    return {"api_calls_per_min": slope(ns, [r["api"]["operator_per_min"] for r in runs]),
            "rss_mib": slope(ns, [r["operator"]["rss_mib"] for r in runs]),
            "cpu_percent": slope(ns, [r["operator"]["cpu_percent_of_one_core"] for r in runs]),
            "sandbox_cpu_percent": slope(ns, [r["sandbox"]["cpu_percent_of_one_core"] for r in runs]),
            "idle_api_calls_per_min": slope(ns, [r["api"]["operator_per_min"] for r in idle]),
            "idle_rss_mib": slope(ns, [r["operator"]["rss_mib"] for r in idle])}


def row(r: dict) -> str:
    idle = r["idle"]
    return (f"busy: api {r['api']['operator_per_min']}/min ({r['api']['operator_per_model_per_min']}/model), "
            f"rss {r['operator']['rss_mib']} MiB, cpu {r['operator']['cpu_percent_of_one_core']}%; "
            f"idle: api {idle['api']['operator_per_min']}/min ({idle['api']['operator_per_model_per_min']}/model), "
            f"rss {idle['operator']['rss_mib']} MiB, cpu {idle['operator']['cpu_percent_of_one_core']}%; "
            f"errors {r['operator']['log_errors'] + idle['operator']['log_errors']}, reaction {r.get('reaction')}")


def table(result: dict) -> str:
    head = (f"{'N':>5} {'phase':>5} {'API/min':>8} {'/model':>7} {'RSS MiB':>8} {'CPU %':>6} {'box CPU %':>9} "
            f"{'errors':>6} {'drift s':>7} {'job s':>6} {'lag s':>5} {'load avg':>16}  top operator requests/min")
    lines = [head]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    for run in result["runs"]:
        rx = run["reaction"]
        for phase, r in (("busy", run), ("idle", run["idle"])):
            top = ", ".join(f"{k} {v:g}" for k, v in list(r["api"]["operator_by_kind_per_min"].items())[:4])
            load = "/".join(f"{x:.2f}" for x in r["loadavg_end"])
            reaction = (f"{fmt(rx['drift_detected_s']):>7} {fmt(rx['job_created_s']):>6} "
                        f"{fmt(rx.get('after_deciding_answer_s')):>5}") if phase == "idle" else f"{'':>7} {'':>6} {'':>5}"
            lines.append(f"{run['models']:>5} {phase:>5} {r['api']['operator_per_min']:>8.1f} "
                         f"{r['api']['operator_per_model_per_min']:>7.2f} {r['operator']['rss_mib']:>8.1f} "
                         f"{r['operator']['cpu_percent_of_one_core']:>6.1f} {r['sandbox']['cpu_percent_of_one_core']:>9.1f} "
                         f"{r['operator']['log_errors']:>6} {reaction} {load:>16}  {top}")
    g = result["growth_per_model"]
    fmt = lambda v, unit: "n/a" if v is None else f"{v:+.3f} {unit}"
    lines.append(f"growth per added model: API {fmt(g['api_calls_per_min'], 'calls/min')} busy, "
                 f"{fmt(g['idle_api_calls_per_min'], 'calls/min')} idle; RSS {fmt(g['rss_mib'], 'MiB')} busy, "
                 f"{fmt(g['idle_rss_mib'], 'MiB')} idle; operator CPU {fmt(g['cpu_percent'], '% of a core')}, sandbox CPU "
                 f"{fmt(g['sandbox_cpu_percent'], '% of a core')} (busy)")
    lines.append(f"jobs: {result['jobs_by_model']} (drifted: {result['drifted_models']}; idle models with jobs: "
                 f"{result['idle_models_with_jobs'] or 'none'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="largest N (default 1000)")
    parser.add_argument("--sizes", type=int, nargs="*",
                        help=f"the Ns (default {', '.join(map(str, SIZES))} up to --models)")
    parser.add_argument("--quick", action="store_true", help="N = 3, 6 with 2 s checks (tests)")
    parser.add_argument("--interval", type=int, help="spec.drift.checkIntervalSeconds (default 30, quick 2)")
    parser.add_argument("--window", type=float, help="measurement window in seconds (default 120, quick 12)")
    parser.add_argument("--window-rows", type=int, default=500, help="spec.drift.windowRows = rows per batch")
    parser.add_argument("--workdir", type=Path, help="keep the work files here (default: a temporary dir)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [3, 6]
        args.interval = args.interval or 2
        args.window = args.window or 12.0
    else:
        args.sizes = args.sizes or [n for n in SIZES if n < args.models] + [args.models]
        args.interval = args.interval or 30
        args.window = args.window or 120.0
    args.sizes = sorted(set(args.sizes))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="selfheal-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    try:
        with interruptible():   # SIGTERM (e.g. from `timeout`) too stops the sandbox and the operator
            bench.start()
            result = bench.run()
    except KeyboardInterrupt as why:
        print(f"scale: interrupted ({why}); stopping the operator and the sandbox", file=sys.stderr)
        return 130
    finally:
        with uninterruptible():
            bench.stop()
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    result["note"] = ("CPU figures share the machine with the sandbox and anything else running; see loadavg_*. "
                      "Reaction times include waiting for the next check: DriftDetected needs `persistence` "
                      "drifted windows, one per check.")
    print(table(result))
    if args.json:
        write_json(args.json, result)
    return 0


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
