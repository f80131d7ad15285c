"""The scale benchmark: one real operator process reconciling N SelfHealingModels on the sandbox.

    python -m bench.scale --models 200 --json out/scale.json    # N = 25, 50, 100, 200 (up to --models)
    python -m bench.scale --quick --json out/scale-quick.json   # N = 3, 6, 2 s checks, about a minute

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
batches in turn), `drifted` (amounts in cents, distances in metres) or `idle` (no new rows).

Protocol, for each N (models are added, the sandbox and operator keep running):
1. create models up to N (replicas 1, the example's spec, `checkIntervalSeconds` from --interval),
   wait until each has a ready pod, scored a window (or, idle, was checked) and one more interval;
2. over --window seconds: API requests by client/verb/resource (the emulator's counter,
   `GET /debug/requests`), the operator's RSS and CPU seconds (/proc/<pid>), errors in its log;
3. switch one model's pods to `drifted` and time (a) `DriftDetected=True` in its status and (b) its
   heal Job's creation, polling every 0.5 s; then switch it back. Both include waiting for the
   checks (`persistence` drifted windows, one per check), so (c) "lag" is the operator's own
   delay: from the pod's describe answer that completed the deciding window to DriftDetected.
   Healing mode stays `Auto` (the example's): the Job is what is timed; it then fails for want of
   sampled traffic, which is fine.

The sandbox (API + kubelets + fake pods) shares the machine's cores with the operator: the load
average is recorded with every window, and the sandbox's own CPU is reported beside the operator's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "selfhealingmodels.yaml"
EXAMPLE = REPO / "examples" / "fraud" / "selfhealingmodel.yaml"
STATUS_FILE = "fake-pods.json"
MODES_DIR = Path("fake-pods") / "modes"
SERVED_DIR = Path("fake-pods") / "drifted-answers"   # when each drifted describe answer went out
OPERATOR_CLIENTS = ("kopf", "OpenAPI-Generator")   # Kopf's own session, kubernetes_asyncio (k8s.py)
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
        meta = pod.pod["metadata"]
        model = pod.env.get("SELFHEAL_MODEL_NAME", "")
        try:
            return (self.modes / meta["namespace"] / model).read_text().strip() or self.default_mode
        except OSError:
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


def set_mode(workdir: Path, namespace: str, model: str, mode: str) -> None:
    path = workdir / MODES_DIR / namespace / model
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


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), {})


# ---- process figures ------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS     # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
        self.sandbox = self.operator = None

    def log(self, text: str) -> None:
        print(f"[scale +{time.monotonic() - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    def start(self) -> None:
        from examples.fraud.train import build_served
        from sandbox.env import client_env
        from sandbox.server import SandboxProcess
        self.t0 = time.monotonic()
        self.model_dir = build_served(self.workdir / "models" / "store", rows=4000, seed=0)
        statuses = build_statuses(self.model_dir, self.args.window_rows)
        statuses["default_mode"] = self.args.background
        self.box_dir = self.workdir / "sandbox"     # the fake pods' app reads its files from here
        self.box_dir.mkdir(exist_ok=True)
        (self.box_dir / STATUS_FILE).write_text(json.dumps(statuses))
        self.storage = self.workdir / "storage"
        self.storage.mkdir(exist_ok=True)
        self.log(f"model trained, fake statuses built ({self.args.window_rows} rows a batch)")
        self.sandbox = SandboxProcess(self.box_dir, fake_pods="bench.scale:fake_pods")
        state = self.sandbox.start()
        self.api = Api(state["url"])
        self.sandbox_pid = state["pid"]
        self.api.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                         yaml.safe_load(CRD_FILE.read_text()))
        self.wait(lambda: condition(self.api.request(
            "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/selfhealingmodels.selfheal.io"),
            "Established").get("status") == "True", 30, "the CRD")
        self.api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": self.namespace}})
        env = {**client_env(self.box_dir), "SELFHEAL_METRICS_PORT": "0", "PYTHONSAFEPATH": "1"}
        self.operator_log = self.workdir / "operator.log"
        self.operator_out = open(self.operator_log, "wb")
        self.operator = subprocess.Popen([sys.executable, "-m", "shm_operator", "--namespace", self.namespace],
                                         env=env, stdout=self.operator_out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.workdir)
        self.log(f"sandbox pid {self.sandbox_pid}, operator pid {self.operator.pid}")

    def stop(self) -> None:
        from sandbox.server import stop_process
        if self.operator is not None:
            stop_process(self.operator, signal.SIGTERM)
            self.operator_out.close()
        if self.sandbox is not None:
            self.sandbox.stop()

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.operator is not None and self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.operator.returncode}): "
                                   f"{self.operator_log.read_text()[-2000:]}")
            result = predicate()
            if result:
                return result
            time.sleep(interval)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")

    def models(self) -> list[dict]:
        return self.api.request("GET", SHM.format(ns=self.namespace))["items"]

    def grow_to(self, n: int) -> None:
        started = time.monotonic()
        while len(self.created) < n:
            name = f"m-{len(self.created):03d}"
            self.api.request("POST", SHM.format(ns=self.namespace),
                             model_cr(name, self.model_dir, self.storage, self.args.interval, self.args.window_rows))
            self.created.append(name)
        idle = self.args.background == "idle"

        def settled():
            items = self.models()
            done = [m for m in items if ((m.get("status") or {}).get("adapter") or {}).get("ready") == "1/1"
                    and ((m["status"].get("drift") or {}).get("lastCheck") if idle
                         else (m["status"].get("drift") or {}).get("samples"))]
            return len(done) == n
        self.wait(settled, 120 + 6 * self.args.interval + n, f"{n} models ready and checked", interval=2.0)
        self.log(f"{n} models ready and checked after {time.monotonic() - started:.0f}s; settling one interval")
        time.sleep(self.args.interval + 2)

    def measure(self, n: int) -> dict:
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
            "models": n, "window_s": round(elapsed, 1),
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
                if condition(obj, "DriftDetected").get("status") == "True":
                    result["drift_detected_s"] = round(time.monotonic() - t0, 1)
                    detected_at = time.time()
            if result["job_created_s"] is None and self.api.request("GET", jobs)["items"]:
                result["job_created_s"] = round(time.monotonic() - t0, 1)
            time.sleep(0.5)
        set_mode(self.box_dir, self.namespace, name, self.args.background)
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
        runs = []
        for n in self.args.sizes:
            self.grow_to(n)
            figures = self.measure(n)
            figures["reaction"] = self.react()
            runs.append(figures)
            self.log(f"N={n}: {row(figures)}")
        jobs = self.jobs_by_model()
        return {
            "config": {"sizes": self.args.sizes, "check_interval_s": self.args.interval,
                       "window_s": self.args.window, "window_rows": self.args.window_rows,
                       "background": self.args.background, "replicas": 1, "healing_mode": "Auto",
                       "persistence": PERSISTENCE, "cpus": os.cpu_count()},
            "runs": runs,
            "jobs_by_model": jobs,
            "drifted_models": list(self.drifted),
            "idle_models_with_jobs": sorted(m for m in jobs if m not in self.drifted),
            "growth_per_model": growth(runs),
        }


def growth(runs: list[dict]) -> dict:
    """Least-squares slopes over N: what one more model costs."""
    ns = [r["models"] for r in runs]
    return {"api_calls_per_min": slope(ns, [r["api"]["operator_per_min"] for r in runs]),
            "rss_mib": slope(ns, [r["operator"]["rss_mib"] for r in runs]),
            "cpu_percent": slope(ns, [r["operator"]["cpu_percent_of_one_core"] for r in runs]),
            "sandbox_cpu_percent": slope(ns, [r["sandbox"]["cpu_percent_of_one_core"] for r in runs])}


def row(r: dict) -> str:
    return (f"api {r['api']['operator_per_min']}/min ({r['api']['operator_per_model_per_min']}/model), "
            f"rss {r['operator']['rss_mib']} MiB, cpu {r['operator']['cpu_percent_of_one_core']}%, "
            f"errors {r['operator']['log_errors']}, reaction {r.get('reaction')}")


def table(result: dict) -> str:
    head = (f"{'N':>4} {'API/min':>8} {'/model':>7} {'RSS MiB':>8} {'CPU %':>6} {'box CPU %':>9} {'errors':>6} "
            f"{'drift s':>7} {'job s':>6} {'lag s':>5} {'load avg':>16}  top operator requests/min")
    lines = [head]
    for r in result["runs"]:
        top = ", ".join(f"{k} {v:g}" for k, v in list(r["api"]["operator_by_kind_per_min"].items())[:4])
        rx = r["reaction"]
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        load = "/".join(f"{x:.2f}" for x in r["loadavg_end"])
        lines.append(f"{r['models']:>4} {r['api']['operator_per_min']:>8.1f} {r['api']['operator_per_model_per_min']:>7.2f} "
                     f"{r['operator']['rss_mib']:>8.1f} {r['operator']['cpu_percent_of_one_core']:>6.1f} "
                     f"{r['sandbox']['cpu_percent_of_one_core']:>9.1f} {r['operator']['log_errors']:>6} "
                     f"{fmt(rx['drift_detected_s']):>7} {fmt(rx['job_created_s']):>6} "
                     f"{fmt(rx.get('after_deciding_answer_s')):>5} {load:>16}  {top}")
    g = result["growth_per_model"]
    fmt = lambda v, unit: "n/a" if v is None else f"{v:+.3f} {unit}"
    lines.append(f"growth per added model: API {fmt(g['api_calls_per_min'], 'calls/min')}, RSS {fmt(g['rss_mib'], 'MiB')}, "
                 f"operator CPU {fmt(g['cpu_percent'], '% of a core')}, sandbox CPU "
                 f"{fmt(g['sandbox_cpu_percent'], '% of a core')}")
    lines.append(f"jobs: {result['jobs_by_model']} (drifted: {result['drifted_models']}; idle models with jobs: "
                 f"{result['idle_models_with_jobs'] or 'none'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=200, help="largest N (default 200)")
    parser.add_argument("--sizes", type=int, nargs="*", help="the Ns (default 25, 50, 100, 200 up to --models)")
    parser.add_argument("--quick", action="store_true", help="N = 3, 6 with 2 s checks (tests)")
    parser.add_argument("--interval", type=int, help="spec.drift.checkIntervalSeconds (default 30, quick 2)")
    parser.add_argument("--window", type=float, help="measurement window in seconds (default 120, quick 12)")
    parser.add_argument("--window-rows", type=int, default=500, help="spec.drift.windowRows = rows per batch")
    parser.add_argument("--background", choices=("clean", "idle"), default="clean",
                        help="what the other models' pods serve: clean traffic, or none at all")
    parser.add_argument("--workdir", type=Path, help="keep the work files here (default: a temporary dir)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [3, 6]
        args.interval = args.interval or 2
        args.window = args.window or 12.0
    else:
        args.sizes = args.sizes or [n for n in (25, 50, 100, 200) if n < args.models] + [args.models]
        args.interval = args.interval or 30
        args.window = args.window or 120.0
    args.sizes = sorted(set(args.sizes))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="selfheal-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    try:
        bench.start()
        result = bench.run()
    finally:
        bench.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    result["note"] = ("CPU figures share the machine with the sandbox and anything else running; see loadavg_*. "
                      "Reaction times include waiting for the next check: DriftDetected needs `persistence` "
                      "drifted windows, one per check.")
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
