"""Chaos benchmark: the whole system under load, faults and restarts, on the local sandbox.

    python -m bench.chaos --json out/chaos.json [--only load,pods,operator,jobs,storage]

Real parts throughout: the sandbox API and its node agents (separate processes, so the API can
restart under running pods), TorchServe pods, healing Jobs, the operator process and kubectl. A
bounded loopback request loop (`sandbox.loadgen.LoadLoop`) runs through every phase and counts
failed requests and latency; the data generator's labels measure accuracy (selfheal never sees
them). Each case ends in a check of the status conditions, Events and the adapter being served.

Groups (each deploys one SelfHealingModel with 2 pods, then runs its cases in order):
  load      drift -> heal -> RollingRestart; manual rollback; HotSwap roll-forward; automatic
            rollback of a harmful adapter
  pods      kill -9 a TorchServe worker, then a whole pod, during a HotSwap; freeze a pod
            (SIGSTOP) so it stops answering
  operator  kill -9 the operator mid-heal and mid-rollout; restart the API server under load
  jobs      a heal Job that hangs past its deadline, one that fails, corrupt/truncated/unfinished
            adapters in the registry, an adapter for another backbone (refused by the pods), a
            Job's passing candidate truncated after its commit (refused by the operator)
  storage   storage full (small tmpfs volumes filled up: real ENOSPC) for sampled traffic, then for
            a heal's candidate; storage unreachable (the volume gone) during a version change

Writes `{"cases": [{name, requests, failed, recovered, detail, p99_ms, max_ms, seconds}]}`. A case whose
setup cannot run here (e.g. no permission to mount tmpfs) says so in `detail` and has
`skipped: true`. Exit status 0 when every case that ran recovered, else 1.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from examples.fraud.generator import CLASSES, FEATURES, World, labelled_rows
from model_handler.model import adapter_to_bytes, load_model, model_hash
from model_handler.registry import VERSION_PATTERN, AdapterRegistry
from model_handler.rules import RuleSet
from examples.cluster import Child, SelfhealCluster, condition, fast_settings, serving
from sandbox import pods as sandbox_pods
from sandbox.loadgen import Answer, LoadLoop

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "chaos"
DRIFTED = World(amount_unit=100.0, distance_unit=1000.0)   # amounts in cents, distances in metres
FAST = fast_settings(cooldown_seconds=60)


@dataclass
class Case:
    name: str
    requests: int
    failed: int
    recovered: bool
    detail: str
    p99_ms: float | None = None
    max_ms: float | None = None   # the slowest answered request (e.g. one held by a frozen pod)
    seconds: float = 0.0
    skipped: bool = False


class Rig(SelfhealCluster):
    """The chaos rig: the harness (`examples.cluster`) with the node agents in their own process (so
    the API can restart under running pods), the operator (killable), one trained model, and the
    registry helpers the cases use."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, namespace=NAMESPACE, separate_node=True)
        self.operator: Child | None = None
        self.model_dir: Path | None = None

    def start(self) -> "Rig":
        from examples.fraud.train import build_served
        self.model_dir = build_served(Path(self.workdir) / "models" / "store", rows=16000, seed=0)
        super().start()
        self.start_operator()
        return self

    def start_operator(self) -> Child:
        self.operator = super().start_operator("--verbose")
        return self.operator

    def jobs(self, name: str) -> list[str]:
        return [j["metadata"]["name"] for j in self.get("jobs")["items"]
                if j["metadata"]["name"].startswith(f"{name}-heal-")]

    # -- models ------------------------------------------------------------------------------------
    def deploy(self, name: str, storage: Path, archive: Path | None = None, **overrides) -> str:
        """Apply a SelfHealingModel and wait for 2 ready pods; returns its predictions URL."""
        self.apply(self.example_model(name, archive or self.model_dir, storage, **{**FAST, **overrides}))
        self.wait_status(name, serving("base"), 240, "2 ready pods serving base")
        service = self.get("service", f"{name}-serving")
        return f"http://{service['spec']['clusterIP']}:8080/predictions/{name}"

    def delete_model(self, name: str) -> None:
        """Delete the SelfHealingModel and wait (up to a minute) until its pods are gone."""
        self.delete("shm", name)
        deadline = time.monotonic() + 60
        while self.serving_pods(name) and time.monotonic() < deadline:
            time.sleep(1)

    def put_adapter(self, storage: Path, name: str, version: str, bias: list[float],
                    base_model_hash: str | None = None) -> Path:
        """Register an adapter whose only change is a logit bias; returns its safetensors file."""
        model = load_model(self.model_dir)
        state = model.adapter_state()
        state["logit_bias"] = torch.tensor(bias)
        rules = RuleSet.from_yaml(self.model_dir / "rules.yaml", FEATURES, CLASSES)
        registry = AdapterRegistry(storage.as_uri(), NAMESPACE, name)
        registry.put(version, adapter_to_bytes(state),
                     {"base_model_hash": base_model_hash or model_hash(self.model_dir), "rules_hash": rules.hash()})
        return storage / NAMESPACE / name / "adapters" / version / "adapter.safetensors"

    @contextlib.contextmanager
    def traffic(self, name: str, url: str, rows: Iterator) -> Iterator[LoadLoop]:
        """Two clients send `rows` to `url` for the length of the block (a case group); then the load
        stops and the model `name` is deleted, however the group ended."""
        loop = LoadLoop(url, rows, clients=2, max_seconds=900).start()
        try:
            yield loop
        finally:
            loop.stop()
            self.delete_model(name)

    def storage(self, name: str) -> Path:
        path = self.workdir / f"storage-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path


# -- measuring -------------------------------------------------------------------------------------
def rolled_out(rig, name: str, settle_s: float = 3.0) -> list[str] | None:
    """The sorted uids of the model's serving pods once its Deployment's roll is complete (every
    pod updated and ready, none of an older ReplicaSet) and the set stays the same for `settle_s`."""
    def complete() -> list[str] | None:
        deployment = rig.get("deployment", f"{name}-serving")
        want, status = deployment["spec"].get("replicas", 1), deployment.get("status") or {}
        if (status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 1)
                or not status.get("replicas") == status.get("updatedReplicas") == status.get("readyReplicas") == want):
            return None
        pods = sorted(p["metadata"]["uid"] for p in rig.serving_pods(name))
        return pods if len(pods) == want else None
    first = complete()
    if first is None:
        return None
    time.sleep(settle_s)
    return first if complete() == first else None


def measured(name: str, loop: LoadLoop, began: float, recovered: bool, detail: str) -> Case:
    """A case over the requests sent since `began` (a time.monotonic() moment); its detail ends with
    the first of those requests that failed."""
    answers = loop.between(began, time.monotonic())
    summary = loop.summary(answers)
    slowest = max((a.latency_ms for a in answers if a.ok), default=None)
    return Case(name, summary["requests"], summary["failed"], bool(recovered), detail + failures(answers),
                None if summary["p99_ms"] is None else round(summary["p99_ms"], 1),
                None if slowest is None else round(slowest, 1), round(time.monotonic() - began, 1))


def drift(loop: LoadLoop, seed: int, after_s: float) -> float:
    """Let clean traffic run `after_s` more seconds, then send drifted rows (`DRIFTED`, drawn with
    `seed`); returns the moment the drift began (time.monotonic())."""
    time.sleep(after_s)
    began = time.monotonic()
    loop.retarget(labelled_rows(DRIFTED, seed))
    return began


def failures(answers: list[Answer], limit: int = 3) -> str:
    bad = [f"HTTP {a.status or 'error'} at +{a.at:.1f}s" for a in answers if not a.ok]
    return "" if not bad else f"; failed: {', '.join(bad[:limit])}{' ...' if len(bad) > limit else ''}"


def pod_processes(pod: dict, needle: str = "") -> list[int]:
    """The pod's live processes (by the sandbox kubelet's environment marker), optionally only
    those whose command line contains `needle`."""
    found = []
    for pid in sorted(sandbox_pods.marked(pod["metadata"]["uid"])):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(pid)
    return found


def restarts_of(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def restarts(rig: Rig, name: str, uid: str) -> int:
    return next((restarts_of(p) for p in rig.serving_pods(name) if p["metadata"]["uid"] == uid), -1)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def heal_processes(name: str) -> list[int]:
    """Running `python -m model_handler.heal --model <name>` processes (this model's Jobs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"model_handler.heal" in argv and any(a == b"--model" and b == name.encode()
                                                     for a, b in zip(argv, argv[1:])):
                found.append(int(entry))
    return found


def event_reasons(rig: Rig, name: str) -> set[str]:
    return {e.get("reason") for e in rig.events(name)}


# -- groups ----------------------------------------------------------------------------------------
def group_load(rig: Rig) -> Iterator[Case]:
    name, storage = "load", rig.storage("load")
    url = rig.deploy(name, storage)
    with rig.traffic(name, url, labelled_rows(World(), 1)) as loop:
        began = drift(loop, seed=2, after_s=10)
        status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("result") not in (None, "Running"), 240,
                          "heal result")
        heal = status["lastHeal"]
        version = heal["version"]
        rig.wait_status(name, serving(version), 240, f"2/2 pods on {version}")
        time.sleep(6)
        accuracy = loop.summary(loop.window(5))["accuracy"] or 0.0
        yield measured("load: drift -> heal Job -> RollingRestart", loop, began,
                       heal["result"] == "Promoted" and accuracy > 0.9,
                       f"{heal['result']} {version}; live accuracy after rollout {accuracy:.3f}")
        rig.wait_status(name, lambda s: (s.get("adapter") or {}).get("lastGood") == version and not s.get("rollout"), 90,
                 f"{version} watched and made last good")

        began = time.monotonic()
        rig.patch_version(name, "base")
        rig.wait_status(name, serving("base"), 240, "2/2 pods on base")
        yield measured("load: manual rollback (kubectl patch, RollingRestart)", loop, began, True,
                       f"{version} -> base")

        rig.patch_model(name, {"spec": {"promotion": {"strategy": "HotSwap"}}})   # a template change: one roll
        rig.wait_status(name, lambda s: serving("base")(s) and s.get("observedGeneration") and not s.get("rollout"), 240,
                 "pods restarted for HotSwap")
        # The strategy change rolls the pods: wait until that roll is over (no old pod left, the
        # new ones ready; a fixed sleep was too short on a loaded machine) and the set holds still.
        uids = rig.wait(lambda: rolled_out(rig, name), 240, "the HotSwap template rolled out")
        began = time.monotonic()
        rig.patch_version(name, version)
        rig.wait_status(name, serving(version), 120, f"2/2 pods swapped to {version}")
        same_pods = sorted(p["metadata"]["uid"] for p in rig.serving_pods(name)) == uids
        yield measured("load: HotSwap roll-forward", loop, began, same_pods,
                       f"base -> {version} without restarting pods: {same_pods}")

        rig.put_adapter(storage, name, "v90", [-3.0, 3.0])   # flags nearly every transaction as fraud
        # Patched right after the swap: the last drift window still holds base's answers to drifted
        # traffic, as bad as v90's. The operator must hold v90 back until a window of v1 alone is its
        # baseline (once, with that stale baseline, the harm passed unseen).
        began = time.monotonic()
        rig.patch_version(name, "v90")
        status = rig.wait_status(name, lambda s: condition(s, "RolledBack").get("status") == "True", 180,
                          "an automatic rollback")
        status = rig.wait_status(name, serving(version), 120, f"pods back on {version}")
        spec_version = rig.get("shm", name)["spec"]["adapter"]["version"]
        reasons = event_reasons(rig, name)
        waited = "WaitingForBaseline" in reasons
        yield measured("load: automatic rollback of a harmful adapter (HotSwap)", loop, began,
                       spec_version == version and "RolledBack" in reasons and "NoBaseline" not in reasons,
                       f"v90 -> {version} (waited for a window of {version}: {waited}): "
                       f"{condition(status, 'RolledBack').get('message', '')[:160]}")


def group_pods(rig: Rig) -> Iterator[Case]:
    name, storage = "pods", rig.storage("pods")
    url = rig.deploy(name, storage, serving={"workers": 2, "sampleFraction": 0.2},
                     promotion={"strategy": "HotSwap", "rollback": {"watchSeconds": 0, "minSamples": 200}})
    for version, bias in (("v1", [0.0, 0.0]), ("v2", [0.2, -0.2])):
        rig.put_adapter(storage, name, version, bias)
    with rig.traffic(name, url, labelled_rows(World(), 3)) as loop:
        time.sleep(5)
        pod = rig.serving_pods(name)[0]
        workers = pod_processes(pod, "model_service_worker")
        began = time.monotonic()
        rig.patch_version(name, "v1")
        signal_all(workers[:1], signal.SIGKILL)
        rig.wait_status(name, serving("v1"), 120, "2/2 pods on v1")
        deadline = time.monotonic() + 90
        while len(pod_processes(pod, "model_service_worker")) < len(workers) and time.monotonic() < deadline:
            time.sleep(1)
        restarted = len(pod_processes(pod, "model_service_worker")) >= len(workers)
        time.sleep(3)
        yield measured("pods: kill -9 a TorchServe worker during a HotSwap", loop, began, restarted,
                       f"killed 1 of {len(workers)} workers of {pod['metadata']['name']}; TorchServe restarted "
                       f"it: {restarted}")

        pod = rig.serving_pods(name)[0]
        began = time.monotonic()
        rig.patch_version(name, "v2")
        killed = pod_processes(pod)
        signal_all(killed, signal.SIGKILL)
        restarted = lambda: restarts(rig, name, pod["metadata"]["uid"]) > restarts_of(pod)
        rig.wait_status(name, lambda s: serving("v2")(s) and restarted(), 240, "the pod's container restarted and 2/2 on v2")
        time.sleep(3)
        yield measured("pods: kill -9 a whole pod during a HotSwap", loop, began, True,
                       f"killed all {len(killed)} processes of {pod['metadata']['name']} (launcher, TorchServe "
                       f"JVM, workers); its container restarted (restartPolicy Always), 2/2 on v2")

        pod = rig.serving_pods(name)[0]
        frozen = pod_processes(pod)
        began = time.monotonic()
        signal_all(frozen, signal.SIGSTOP)
        try:
            status = rig.wait_status(name, lambda s: condition(s, "Degraded").get("reason") == "PodsUnreachable", 90,
                              "Degraded/PodsUnreachable")
            unreachable = (status.get("drift") or {}).get("unreachablePods") or []
        finally:
            signal_all(frozen, signal.SIGCONT)
        status = rig.wait_status(name, lambda s: condition(s, "Degraded").get("status") == "False" and serving("v2")(s), 90,
                          "Degraded cleared and 2/2 on v2")
        reasons = event_reasons(rig, name)
        yield measured("pods: a pod stops answering (SIGSTOP), then comes back", loop, began,
                       {"PodsUnreachable", "PodsHealthy"} <= reasons and serving("v2")(status),
                       f"status listed {unreachable[:1]}; Events PodsUnreachable and PodsHealthy: "
                       f"{ {'PodsUnreachable', 'PodsHealthy'} <= reasons}")


def group_operator(rig: Rig) -> Iterator[Case]:
    name, storage = "ops", rig.storage("ops")
    url = rig.deploy(name, storage)
    with rig.traffic(name, url, labelled_rows(World(), 4)) as loop:
        began = drift(loop, seed=5, after_s=5)
        rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("result") == "Running", 180, "a heal Job")
        rig.operator.kill()
        time.sleep(2)
        rig.start_operator()
        status = rig.wait_status(name, lambda s: (s.get("rollout") or {}).get("to") or
                          (s.get("lastHeal") or {}).get("result") not in (None, "Running"), 240,
                          "the heal's result")
        version = status["lastHeal"]["version"]
        jobs = rig.jobs(name)
        yield measured("operator: kill -9 mid-heal", loop, began,
                       status["lastHeal"]["result"] == "Promoted" and len(jobs) == 1,
                       f"the restarted operator found Job {status['lastHeal']['job']} and promoted {version}; "
                       f"Jobs: {jobs}")

        began = time.monotonic()
        if not (status.get("rollout") or {}).get("complete"):
            rig.operator.kill()
            time.sleep(2)
            rig.start_operator()
            killed = "while the rollout ran"
        else:
            killed = "too late: the rollout had completed"
        status = rig.wait_status(name, lambda s: (s.get("adapter") or {}).get("lastGood") == version and
                          not s.get("rollout") and serving(version)(s), 240, f"{version} rolled out and watched")
        entries = [h for h in status.get("history") or [] if h.get("version") == version]
        yield measured("operator: kill -9 mid-rollout", loop, began,
                       len(entries) == 1 and len(rig.jobs(name)) == 1 and killed.startswith("while"),
                       f"killed {killed}; history has {len(entries)} entry for {version}; Jobs {rig.jobs(name)}")

        began = time.monotonic()
        down_started = time.monotonic()
        startup_s = rig.restart_api(down_s=5.0)
        rig.patch_version(name, "base")   # the operator must see this change and roll it out
        rig.wait_status(name, serving("base"), 240, "2/2 pods on base after the API restart")
        yield measured("operator: API server restarted under load", loop, began, True,
                       f"API down {5 + startup_s:.1f}s from {down_started - began:.1f}s; pods kept serving; the "
                       f"operator resumed and a rollback after it completed")


def group_jobs(rig: Rig) -> Iterator[Case]:
    name, storage = "jobs", rig.storage("jobs")
    archive = rig.workdir / "archive-jobs" / "fraud"
    shutil.copytree(rig.model_dir, archive)
    url = rig.deploy(name, storage, archive=archive,
                     healing={"cooldownSeconds": 20, "maxHealsPerDay": 2, "trainingWindowRows": 1500, "minRows": 300,
                              "waitForRowsSeconds": 20, "activeDeadlineSeconds": 30})
    with rig.traffic(name, url, labelled_rows(DRIFTED, 6)) as loop:
        began = time.monotonic()
        status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("result") == "Running", 180, "a heal Job")
        first = status["lastHeal"]["job"]
        deadline = time.monotonic() + 30
        while not (stuck := heal_processes(name)) and time.monotonic() < deadline:
            time.sleep(0.2)
        signal_all(stuck, signal.SIGSTOP)   # a Job that hangs: it never finishes by itself
        (archive / "reference.json").unlink()   # and the next one will fail (the pods keep it in memory)
        status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("job") == first and
                          s["lastHeal"].get("result") != "Running", 120, "the hung Job's end")
        heal = status["lastHeal"]
        yield measured("jobs: a heal Job hangs past activeDeadlineSeconds", loop, began,
                       bool(stuck) and heal["result"] == "Failed" and "DeadlineExceeded" in (heal.get("reason") or "")
                       and serving("base")(status) and "HealFailed" in event_reasons(rig, name),
                       f"{first} (process frozen: {bool(stuck)}): {heal['result']}: {(heal.get('reason') or '')[:120]}; "
                       f"pods still on base")

        began = time.monotonic()
        status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("job") not in (None, first) and
                          s["lastHeal"].get("result") != "Running", 180, "the second Job's end")
        heal = status["lastHeal"]
        second = heal["job"]
        time.sleep(10)   # the budget (2 a day) is spent: no third Job may start
        jobs = rig.jobs(name)
        yield measured("jobs: a heal Job fails (the model volume lost a file)", loop, began,
                       heal["result"] == "Failed" and "reference.json" in (heal.get("reason") or "")
                       and len(jobs) == 2 and serving("base")(rig.status(name)),
                       f"{heal['job']}: {(heal.get('reason') or '')[:120]}; daily budget then stopped healing "
                       f"(Jobs: {jobs})")

        shutil.copy(rig.model_dir / "reference.json", archive / "reference.json")   # repaired for new pods

        # Adapters broken in the registry: what a Job killed mid-write or a bad disk leaves behind.
        good = rig.put_adapter(storage, name, "v1", [0.0, 0.0])
        truncated = rig.put_adapter(storage, name, "v2", [0.0, 0.0])
        truncated.write_bytes(truncated.read_bytes()[:40])
        garbage = rig.put_adapter(storage, name, "v3", [0.0, 0.0])
        meta_path = garbage.parent / "meta.json"
        meta = json.loads(meta_path.read_text())
        junk = b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + os.urandom(64)
        garbage.write_bytes(junk)
        import hashlib
        meta["sha256"] = hashlib.sha256(junk).hexdigest()   # the hash matches: only parsing can catch it
        meta_path.write_text(json.dumps(meta))
        unfinished = good.parent.parent / "v4"
        unfinished.mkdir()
        shutil.copy(good, unfinished / "adapter.safetensors")   # data written, meta.json never
        for version, expect, what in (("v2", "AdapterCorrupt", "truncated file (sha256 mismatch)"),
                                      ("v3", "AdapterCorrupt", "garbage with a matching sha256"),
                                      ("v4", "AdapterNotFound", "a Job killed before meta.json")):
            began = time.monotonic()
            rig.patch_version(name, version)
            status = rig.wait_status(name, lambda s, e=expect: condition(s, "Degraded").get("reason") == e, 60,
                              f"Degraded/{expect}")
            time.sleep(3)
            status = rig.status(name)
            kept = serving("base")(status) and (status.get("adapter") or {}).get("desired") == "base"
            yield measured(f"jobs: {what} in the registry", loop, began,
                           kept and expect in event_reasons(rig, name),
                           f"{version} refused ({expect}: {condition(status, 'Degraded').get('message', '')[:100]}); "
                           f"pods kept serving base")

        # An adapter that passes every registry check but was trained for another backbone: only
        # the pods can tell, and the operator rolls back what they refuse.
        rig.put_adapter(storage, name, "v5", [0.0, 0.0], base_model_hash="0" * 64)
        began = time.monotonic()
        rig.patch_version(name, "v5")
        status = rig.wait_status(name, lambda s: condition(s, "RolledBack").get("reason") == "AdapterRefused", 180,
                          "a rollback of the refused adapter")
        status = rig.wait_status(name, lambda s: serving("base")(s) and not s.get("rollout"), 180, "pods on base")
        spec_version = rig.get("shm", name)["spec"]["adapter"]["version"]
        yield measured("jobs: an adapter for another backbone (pods refuse it)", loop, began,
                       spec_version == "base" and "RolledBack" in event_reasons(rig, name),
                       f"{condition(status, 'RolledBack').get('message', '')[:160]}; spec back to {spec_version}")
        rig.patch_version(name, "base")
        rig.wait_status(name, lambda s: condition(s, "Degraded").get("status") != "True", 60, "Degraded cleared")

        # A heal Job whose candidate is damaged right after its commit (a bad disk, a writer racing
        # it): its gate passed, but the operator reads the file back before promoting and refuses it.
        began = time.monotonic()
        adapters = storage / NAMESPACE / name / "adapters"
        with CandidateCutter(adapters) as cutter:
            rig.patch_model(name, {"spec": {"healing": {"maxHealsPerDay": 3}}})   # one more heal today
            status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("job") not in (first, second) and
                              s["lastHeal"].get("result") not in (None, "Running"), 240, "the third Job's end")
        heal = status["lastHeal"]
        time.sleep(5)   # a promotion would show now: spec.adapter.version, a rollout
        status = rig.status(name)
        spec_version = rig.get("shm", name)["spec"]["adapter"]["version"]
        state = json.loads((adapters / heal["version"] / "meta.json").read_text()).get("state")
        event = any(e.get("reason") == "HealFailed" and heal["job"] in e.get("message", "") for e in rig.events(name))
        yield measured("jobs: a heal Job's candidate truncated after its commit", loop, began,
                       cutter.cut == [heal["version"]] and heal["result"] == "Failed"
                       and "sha256 mismatch" in (heal.get("reason") or "") and spec_version == "base"
                       and serving("base")(status) and state == "rejected" and event,
                       f"{heal['job']} wrote {heal['version']} (cut to 40 bytes: {cutter.cut}); {heal['result']}: "
                       f"{(heal.get('reason') or '')[:120]}; registry state {state}; spec stays {spec_version}")


class CandidateCutter:
    """Truncates every adapter version committed under `adapters/` while it runs, within
    milliseconds of its meta.json appearing: before the Job exits, so before the operator can read
    its result. `cut` lists the versions it damaged. A writer's staging directory (`.v6.tmp-...`,
    renamed into place on commit) is not a version yet: cutting it would damage the candidate
    before its commit, and name it twice."""

    def __init__(self, adapters: Path):
        self.adapters = adapters
        self.known = {p.parent.name for p in adapters.glob("*/meta.json")}
        self.cut: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "CandidateCutter":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            for meta in self.adapters.glob("*/meta.json"):
                if meta.parent.name not in self.known and VERSION_PATTERN.match(meta.parent.name):
                    self.known.add(meta.parent.name)
                    data = meta.with_name("adapter.safetensors")
                    data.write_bytes(data.read_bytes()[:40])
                    self.cut.append(meta.parent.name)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True, text=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(volume: Path) -> Path:
    """Write one file that takes every free byte of the volume; returns it."""
    filler = volume / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):   # ENOSPC: full at this granularity
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def group_storage(rig: Rig) -> Iterator[Case]:
    """The storage URI points at a symlink to the volume: removing the link is the volume going away
    (unreachable). The volume is a small tmpfs, and the registry's adapters/ folder a second one
    inside it, so each can really fill up (ENOSPC): first the whole volume (the pods cannot write
    sampled traffic), then only adapters/ (a heal Job cannot write its candidate)."""
    name = "store"
    volume, storage = rig.workdir / "volume-store", rig.workdir / "storage-store"
    adapters = volume / NAMESPACE / name / "adapters"
    with contextlib.ExitStack() as mounts:
        try:
            mounts.enter_context(small_tmpfs(volume, "32m"))
            adapters.mkdir(parents=True)
            mounts.enter_context(small_tmpfs(adapters, "1m"))
            mounted = True
        except (subprocess.CalledProcessError, OSError) as err:
            why = getattr(err, "stderr", "") or str(err)
            for what in ("sampled traffic", "a heal's candidate"):
                yield Case(f"storage: full (ENOSPC) for {what}", 0, 0, False,
                           f"not run: cannot mount a small tmpfs here ({why.strip()[:200]})", skipped=True)
            mounted = False
            adapters.mkdir(parents=True, exist_ok=True)
        storage.symlink_to(volume)
        url = rig.deploy(name, storage, healing={"cooldownSeconds": 20, "maxHealsPerDay": 4,
                                                 "trainingWindowRows": 1500, "minRows": 300,
                                                 "waitForRowsSeconds": 30})
        with rig.traffic(name, url, labelled_rows(World(), 7)) as loop:
            if mounted:
                began = time.monotonic()
                filler = fill(volume)
                loop.retarget(labelled_rows(DRIFTED, 8))
                status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("result") not in (None, "Running"),
                                  240, "a heal with no room for sampled traffic")
                heal = status["lastHeal"]
                yield measured("storage: full (ENOSPC) for sampled traffic", loop, began,
                               heal["result"] == "NothingToFix" and "sampled traffic" in (heal.get("reason") or "")
                               and serving("base")(status),
                               f"pods dropped the samples they could not write; the heal found "
                               f"{(heal.get('reason') or '')[:100]!r}; pods still on base")

                began = time.monotonic()
                fill(adapters)
                filler.unlink()   # traffic can be written again; the registry stays full
                status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("job") != heal["job"] and
                                  s["lastHeal"].get("result") not in (None, "Running"), 240,
                                  "a heal with a full registry")
                failed_heal = status["lastHeal"]
                full = failed_heal["result"] == "Failed" and "No space left" in (failed_heal.get("reason") or "")
                (adapters / ".filler").unlink()
                status = rig.wait_status(name, lambda s: (s.get("lastHeal") or {}).get("result") == "Promoted", 300,
                                  "a heal once there is space again")
                version = status["lastHeal"]["version"]
                rig.wait_status(name, serving(version), 240, f"2/2 pods on {version}")
                yield measured("storage: full (ENOSPC) for a heal's candidate", loop, began,
                               full and "HealFailed" in event_reasons(rig, name),
                               f"{failed_heal['job']} {failed_heal['result']}: "
                               f"{(failed_heal.get('reason') or '')[:160]}; after space was freed, {version} "
                               f"promoted")
                # the version to move to while the storage is gone: the healed adapter under a new name
                registry = AdapterRegistry(storage.as_uri(), NAMESPACE, name)
                data, meta = registry.get(version)
                registry.put("v90", data, {"base_model_hash": meta.base_model_hash, "rules_hash": meta.rules_hash})
                target = "v90"
            else:
                rig.put_adapter(storage, name, "v1", [0.0, 0.0])
                target = "v1"
            began = time.monotonic()
            storage.unlink()   # the volume is gone: every path under the storage URI fails
            try:
                rig.patch_version(name, target)
                status = rig.wait_status(name, lambda s: condition(s, "Degraded").get("reason") == "RegistryUnreachable",
                                  60, "Degraded/RegistryUnreachable")
                time.sleep(5)
                kept = (rig.status(name).get("adapter") or {}).get("current") != target
            finally:
                storage.symlink_to(volume)
            status = rig.wait_status(name, lambda s: serving(target)(s) and condition(s, "Degraded").get("status") == "False",
                              120, f"2/2 on {target} once the storage is back")
            yield measured("storage: unreachable during a version change", loop, began,
                           kept and "RegistryUnreachable" in event_reasons(rig, name),
                           f"pods kept their adapter while the registry was gone: {kept}; then {target} rolled out")


GROUPS: dict[str, Callable[[Rig], Iterator[Case]]] = {
    "load": group_load, "pods": group_pods, "operator": group_operator, "jobs": group_jobs,
    "storage": group_storage}


def run(groups: list[str], workdir: Path) -> list[Case]:
    cases: list[Case] = []
    rig = Rig(workdir).start()
    try:
        for group in groups:
            began = time.monotonic()
            try:
                for case in GROUPS[group](rig):
                    cases.append(case)
                    print(f"  {'ok  ' if case.recovered else ('skip' if case.skipped else 'FAIL')} {case.name}: "
                          f"{case.requests} requests, {case.failed} failed, p99 {case.p99_ms} ms, max {case.max_ms} ms, "
                          f"{case.seconds:.0f}s; {case.detail}", flush=True)
            except Exception as err:   # a step timed out: record it, go on with the next group
                cases.append(Case(f"{group}: (group stopped)", 0, 0, False,
                                  f"{type(err).__name__}: {err}"[:1500], seconds=round(time.monotonic() - began, 1)))
                print(f"  FAIL {group}: {err}", flush=True)
                if not rig.operator.running():
                    rig.start_operator()
    finally:
        rig.stop()
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the cases here")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups ({', '.join(GROUPS)})")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: a temp dir)")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown groups {unknown}; choose from {list(GROUPS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="selfheal-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: groups {groups}; logs in {workdir}", flush=True)
    began = time.monotonic()
    cases = run(groups, workdir)
    ran = [c for c in cases if not c.skipped]
    total = {"requests": sum(c.requests for c in ran), "failed": sum(c.failed for c in ran)}
    print(f"chaos: {sum(c.recovered for c in ran)}/{len(ran)} cases recovered, {total['failed']} of "
          f"{total['requests']} requests failed, {time.monotonic() - began:.0f}s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cases": [asdict(c) for c in cases], "total": total}, indent=2))
    return 0 if all(c.recovered for c in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
