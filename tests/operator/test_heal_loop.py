"""The whole loop on the sandbox with real processes: the operator, TorchServe pods (process
kubelet), the healing Job, and a request loop through the Service that measures live accuracy with
the generator's labels (which selfheal never sees).

clean traffic (no heal, no alarm) -> drifted traffic (collapse) -> drift detected -> heal Job ->
gate -> rollout -> accuracy recovers -> `kubectl patch` rollback and roll-forward, 0 failed requests.
A harmful adapter patched in by hand is rolled back automatically. The timeline is printed.
"""
from __future__ import annotations

import json
import time

import pytest

from examples.fraud.generator import World, labelled_rows
from model_handler.registry import AdapterRegistry
from sandbox.loadgen import LoadLoop
from sandbox_helpers import wait_until
from test_reconcile import condition, events, example_cr, put_adapter, status_of

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

FAST = {"replicas": 2,
        "serving": {"workers": 1, "sampleFraction": 1.0},
        "drift": {"windowRows": 300, "minSamples": 200, "checkIntervalSeconds": 2},
        "healing": {"cooldownSeconds": 60, "trainingWindowRows": 1500, "minRows": 300, "waitForRowsSeconds": 30},
        "promotion": {"strategy": "RollingRestart", "rollback": {"watchSeconds": 20, "minSamples": 200}}}


def service_url(sandbox, namespace) -> str:
    svc = sandbox.get("service", "fraud-serving", "-n", namespace)
    return f"http://{svc['spec']['clusterIP']}:8080/predictions/fraud"


def wait_status(sandbox, namespace, predicate, timeout, what, operator):
    try:
        return wait_until(lambda: (s := status_of(sandbox, namespace)) and predicate(s) and s,
                          timeout=timeout, interval=1.0, what=what)
    except AssertionError as err:
        raise AssertionError(f"{err}\nstatus: {json.dumps(status_of(sandbox, namespace))[:3000]}\n"
                             f"operator log:\n{operator.tail()}") from None


def test_drift_heal_rollout_rollback(sandbox, namespace, operator, model_dir, tmp_path, capsys):
    storage = tmp_path / "storage"
    storage.mkdir()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=example_cr(model_dir, storage, **FAST))
    wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("ready") == "2/2", 180,
                "2 ready pods serving base", operator)
    loop = LoadLoop(service_url(sandbox, namespace), labelled_rows(World(), 1), clients=2, max_seconds=500).start()
    timeline = {"start": time.monotonic()}
    try:
        time.sleep(20)
        clean = loop.summary(loop.window(15))
        status = status_of(sandbox, namespace)
        assert not status.get("lastHeal"), "healed on clean traffic"
        assert condition(status, "DriftDetected").get("status") != "True"

        loop.retarget(labelled_rows(World(amount_unit=100.0, distance_unit=1000.0), 2))
        timeline["drift"] = time.monotonic()
        status = wait_status(sandbox, namespace, lambda s: (s.get("lastHeal") or {}).get("result") == "Running",
                             120, "a heal Job", operator)
        timeline["job_started"] = time.monotonic()
        drifted = loop.summary(loop.between(timeline["drift"] + 1, timeline["job_started"]))
        # The operator dies mid-heal; a new one resumes and never launches a second Job.
        operator.stop(kill=True)
        operator.start()
        status = wait_status(sandbox, namespace, lambda s: (s.get("lastHeal") or {}).get("result") not in (None, "Running"),
                             180, "the heal Job's result", operator)
        timeline["job_done"] = time.monotonic()
        assert status["lastHeal"]["result"] == "Promoted", status["lastHeal"]
        healed_version = status["lastHeal"]["version"]
        assert len(sandbox.get("jobs", "-n", namespace)["items"]) == 1
        # its result stored, the Job gets its TTL (spec.healing.ttlSecondsAfterFinished, default a day)
        job = status["lastHeal"]["job"]
        wait_until(lambda: sandbox.get("job", job, "-n", namespace)["spec"].get("ttlSecondsAfterFinished") == 86400,
                   timeout=30, what="the heal Job's TTL")
        wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("current") == healed_version
                    and s["adapter"].get("ready") == "2/2", 180, f"all pods on {healed_version}", operator)
        timeline["healed"] = time.monotonic()
        time.sleep(8)
        healed = loop.summary(loop.window(6))

        # A person rolls back with one kubectl patch, then forward again.
        for version in ("base", healed_version):
            sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge",
                            "-p", json.dumps({"spec": {"adapter": {"version": version}}}))
            wait_status(sandbox, namespace, lambda s, v=version: (s.get("adapter") or {}).get("current") == v
                        and s["adapter"].get("ready") == "2/2", 180, f"pods on {version}", operator)
        timeline["rolled_forward"] = time.monotonic()
    finally:
        loop.stop()
    total = loop.summary()
    start = timeline["start"]
    with capsys.disabled():
        print("\n[timeline] " + ", ".join(f"{k} +{v - start:.1f}s" for k, v in timeline.items() if k != "start"))
        print(f"[timeline] drift -> healed pods: {timeline['healed'] - timeline['drift']:.1f}s; accuracy clean "
              f"{clean['accuracy']:.3f}, drifted {drifted['accuracy']:.3f}, healed {healed['accuracy']:.3f}; "
              f"requests {total['requests']}, failed {total['failed']}, labels used by selfheal: 0")
    assert clean["accuracy"] > 0.95 and drifted["accuracy"] < 0.5 and healed["accuracy"] > 0.9
    assert total["failed"] == 0, [a for a in loop.answers if not a.ok][:5]
    history = status_of(sandbox, namespace)["history"]
    assert [(h["version"], h["by"]) for h in history[-3:]] == [(healed_version, "operator"), ("base", "user"),
                                                                 (healed_version, "user")]
    assert AdapterRegistry(storage.as_uri(), namespace, "fraud").meta(healed_version).labels_used == 0
    # the (restarted) operator's own probes and metrics
    assert operator.get(operator.liveness_port, "/healthz")[0] == 200
    metrics = operator.get(operator.metrics_port, "/metrics")[1]
    assert f'selfheal_heals_finished_total{{model="fraud",namespace="{namespace}",result="Promoted"}} 1.0' in metrics
    assert f'selfheal_drift_score{{model="fraud",namespace="{namespace}"}}' in metrics


def test_a_harmful_adapter_is_rolled_back_automatically(sandbox, namespace, operator, model_dir, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    spec = dict(FAST, promotion={"strategy": "HotSwap", "rollback": {"watchSeconds": 60, "minSamples": 200}})
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=example_cr(model_dir, storage, **spec))
    wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("ready") == "2/2", 180,
                "2 ready pods", operator)
    put_adapter(model_dir, storage, namespace, "v9", [-3.0, 3.0])  # flags nearly every transaction
    loop = LoadLoop(service_url(sandbox, namespace), labelled_rows(World(), 3), clients=2, max_seconds=300).start()
    try:
        wait_status(sandbox, namespace, lambda s: (s.get("drift") or {}).get("samples"), 60, "a drift window",
                    operator)
        sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge",
                        "-p", json.dumps({"spec": {"adapter": {"version": "v9"}}}))
        wait_status(sandbox, namespace, lambda s: condition(s, "RolledBack").get("status") == "True",
                    180, "an automatic rollback", operator)
        # The RolledBack condition lands with the spec patch; the history entry only once the
        # reconcile accepts the change, so wait for both rather than read history too early.
        status = wait_status(sandbox, namespace,
                             lambda s: (s.get("adapter") or {}).get("current") == "base"
                             and (s.get("history") or [{}])[-1].get("by") == "rollback",
                             120, "pods back on base, recorded as a rollback", operator)
    finally:
        loop.stop()
    assert sandbox.get("shm", "fraud", "-n", namespace)["spec"]["adapter"]["version"] == "base"
    assert status["history"][-1]["version"] == "base"
    message = condition(status, "RolledBack")["message"]
    assert message.startswith("v9 -> base") and ("rule conflict rose" in message or "class fraud rate" in message)
    assert AdapterRegistry(storage.as_uri(), namespace, "fraud").meta("v9").state == "rolled-back"
    assert loop.summary()["failed"] == 0


def drift_until(sandbox, namespace, operator, storage, predicate, what, spec_overrides, model_dir):
    """Apply the CR, wait for 2 pods, send drifted traffic until `predicate(status)` holds."""
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=example_cr(model_dir, storage, **spec_overrides))
    wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("ready") == "2/2", 180,
                "2 ready pods", operator)
    loop = LoadLoop(service_url(sandbox, namespace), labelled_rows(World(amount_unit=100.0, distance_unit=1000.0), 4),
                    clients=2, max_seconds=300).start()
    try:
        return wait_status(sandbox, namespace, predicate, 180, what, operator), loop
    finally:
        loop.stop()


def test_manual_mode_waits_for_a_person(sandbox, namespace, operator, model_dir, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    spec = dict(FAST, healing={**FAST["healing"], "mode": "Manual"})
    status, loop = drift_until(sandbox, namespace, operator, storage, lambda s: s.get("candidate"),
                               "a candidate awaiting approval", spec, model_dir)
    version = status["candidate"]["version"]
    assert status["lastHeal"]["result"] == "AwaitingApproval"
    assert sandbox.get("shm", "fraud", "-n", namespace)["spec"]["adapter"]["version"] == "base"
    messages = [e.get("message", "") for e in sandbox.get("events", "-n", namespace)["items"]]
    command = f'kubectl patch shm fraud -n {namespace} --type merge -p \'{{"spec":{{"adapter":{{"version":"{version}"}}}}}}\''
    assert any(command in m for m in messages), messages
    sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"adapter": {"version": version}}}))
    status = wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("current") == version, 180,
                         f"pods on the approved {version}", operator)
    assert status["history"][-1]["by"] == "user" and not status.get("candidate")
    assert loop.summary()["failed"] == 0


def test_a_failing_heal_job_is_a_state_not_a_crash(sandbox, namespace, operator, model_dir, tmp_path):
    import shutil
    archive = tmp_path / "store" / "fraud"
    shutil.copytree(model_dir, archive)
    storage = tmp_path / "storage"
    storage.mkdir()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=example_cr(archive, storage, **FAST))
    wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("ready") == "2/2", 180,
                "2 ready pods", operator)
    (archive / "reference.json").unlink()  # a broken model volume: the pods have it in memory, the Job not
    loop = LoadLoop(service_url(sandbox, namespace), labelled_rows(World(amount_unit=100.0, distance_unit=1000.0), 5),
                    clients=2, max_seconds=300).start()
    try:
        status = wait_status(sandbox, namespace, lambda s: (s.get("lastHeal") or {}).get("result")
                             not in (None, "Running"), 180, "the failed heal", operator)
    finally:
        loop.stop()
    assert status["lastHeal"]["result"] == "Failed" and "reference.json" in status["lastHeal"]["reason"]
    assert condition(status, "Healing")["status"] == "False"
    assert any(e.get("reason") == "HealFailed" for e in sandbox.get("events", "-n", namespace)["items"])
    assert status["adapter"]["current"] == "base" and loop.summary()["failed"] == 0  # still serving
    assert len(sandbox.get("jobs", "-n", namespace)["items"]) == 1  # cooldown: no retry loop


def test_a_rollout_no_traffic_judged_is_not_vouched_for(sandbox, namespace, operator, model_dir, tmp_path):
    """An idle model: the new version rolls out (no baseline to wait for) and the idle pod swaps
    to it, but a watch that saw no live rows must not make it the rollback target."""
    storage = tmp_path / "storage"
    storage.mkdir()
    # HotSwap: with no prediction at all, the pod swaps when the operator asks for its status.
    spec = dict(FAST, replicas=1, promotion={"strategy": "HotSwap", "rollback": {"watchSeconds": 5, "minSamples": 200}})
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=example_cr(model_dir, storage, **spec))
    wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("ready") == "1/1", 180,
                "a ready pod", operator)
    put_adapter(model_dir, storage, namespace, "v1", [0.5, -0.5])
    sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"adapter": {"version": "v1"}}}))
    try:
        wait_until(lambda: "WatchInconclusive" in {e.get("reason") for e in events(sandbox, namespace)},
                   timeout=90, interval=1.0, what="a WatchInconclusive Event")
    except AssertionError as err:
        raise AssertionError(f"{err}\nstatus: {json.dumps(status_of(sandbox, namespace))[:3000]}\nevents: "
                             f"{[e.get('reason') for e in events(sandbox, namespace)]}\n{operator.tail()}") from None
    status = status_of(sandbox, namespace)
    assert status["adapter"]["current"] == "v1" and not status.get("rollout")
    assert (status["adapter"].get("lastGood") or "base") == "base"
    reasons = [e.get("reason") for e in events(sandbox, namespace)]
    assert "NoBaseline" in reasons and "RolloutHealthy" not in reasons
