"""The process kubelet's Deployment part: real kubectl, real processes on their own pod IPs, a real
proxy per Service, and real TorchServe pods rolled over under load without losing a request."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sandbox import env as sandbox_env
from sandbox import server as sandbox_server
import ipaddress
import socket

from sandbox.pods import AddressPool, PodSpecError, alive, descendants, expand
from sandbox_helpers import REPO_ROOT
from sandbox_helpers import Sandbox, deployment_yaml, service_yaml, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving_support import FEATURES, build_plain_store, expected_probabilities  # noqa: E402

# A tiny HTTP server as the pod's process: answers with its pod name, env and a ConfigMap file.
ECHO_SERVER = """
import http.server, json, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pod": os.environ["POD_NAME"], "ip": os.environ["POD_IP"],
                           "version": os.environ.get("VERSION"), "argv": sys.argv[1:],
                           "config": open(os.path.join(sys.argv[1], "greeting")).read(), "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), Handler).serve_forever()
"""


def echo_deployment(name: str, version: str, replicas: int = 2) -> str:
    return deployment_yaml(name, f"""
      terminationGracePeriodSeconds: 5
      volumes: [{{name: cfg, configMap: {{name: {name}-cfg}}}}, {{name: scratch, emptyDir: {{}}}}]
      containers:
        - name: web
          image: selfheal/echo:dev
          command: [python, -c, {json.dumps(ECHO_SERVER)}]
          args: [/etc/echo, "$(POD_IP):8080", "$$(POD_IP)", "$(UNDEFINED)"]
          ports: [{{name: http, containerPort: 8080}}]
          env:
            - {{name: VERSION, value: "{version}"}}
            - name: POD_IP
              valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          volumeMounts: [{{name: cfg, mountPath: /etc/echo}}, {{name: scratch, mountPath: /scratch}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}""", replicas=replicas,
        strategy="{type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}") + service_yaml(name, 80, "http")


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def ready_pods(sandbox: Sandbox, namespace: str, app: str) -> list[dict]:
    pods = sandbox.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                   for c in (p.get("status") or {}).get("conditions") or [])]


def pod_pid(pod: dict) -> int:
    return int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))


def test_var_expansion_follows_kubernetes_rules():
    env = {"POD_IP": "127.0.0.7", "PORT": "8080"}
    assert expand("--bind $(POD_IP) --port=$(PORT)", env) == "--bind 127.0.0.7 --port=8080"
    assert expand("$$(POD_IP) $(MISSING) $$ $", env) == "$(POD_IP) $(MISSING) $ $"


def test_address_pools_of_two_sandboxes_never_hand_out_the_same_address(tmp_path: Path):
    network = ipaddress.IPv4Network("127.0.3.0/24")
    first, second = AddressPool(network, "127.0.3.2", tmp_path), AddressPool(network, "127.0.3.2", tmp_path)
    assert first.take() == "127.0.3.2" and second.take() == "127.0.3.3"  # the lock file keeps .2 taken
    with socket.socket() as listener:  # something else listens on .4:8080: skip that address
        listener.bind(("127.0.3.4", 8080))
        listener.listen()
        assert second.take([8080]) == "127.0.3.5"
    first.release("127.0.3.2")
    assert second.take() == "127.0.3.2"  # released addresses are reused, lowest first
    assert not first.claim("127.0.3.3")


def test_an_address_pool_goes_on_in_its_overflow_network_once_the_first_is_full(tmp_path: Path):
    """A /24 holds 253 pods; a scale test runs a thousand: once `network` is full, `overflow`."""
    pool = AddressPool(ipaddress.IPv4Network("127.0.3.0/30"), "127.0.3.1", tmp_path,
                       overflow=ipaddress.IPv4Network("127.0.70.0/29"))
    taken = [pool.take() for _ in range(4)]
    assert taken == ["127.0.3.1", "127.0.3.2", "127.0.3.3", "127.0.70.1"]
    assert pool.holds("127.0.70.6") and pool.holds("127.0.3.0") and not pool.holds("127.0.71.1")
    pool.release("127.0.3.2")
    assert pool.take() == "127.0.3.2"   # the first network first, lowest free
    while len(pool.claims) < 9:   # 3 + the overflow's 6 hosts
        pool.take()
    with pytest.raises(PodSpecError, match="127.0.3.0/30 or 127.0.70.0/29"):
        pool.take()


@pytest.fixture
def echo(sandbox: Sandbox, namespace: str) -> str:
    sandbox.kubectl("create", "configmap", "echo-cfg", "-n", namespace, "--from-literal=greeting=hello")
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=echo_deployment("echo", "v1"))
    sandbox.kubectl("rollout", "status", "-n", namespace, "deployment/echo", "--timeout=60s", timeout=70)
    return "echo"


def test_deployment_runs_pods_on_their_own_ips_behind_a_service(sandbox: Sandbox, namespace: str, echo: str):
    pods = ready_pods(sandbox, namespace, echo)
    assert len(pods) == 2
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ip.startswith("127.0.0.") for ip in ips)
    [rs] = sandbox.get("replicasets", "-n", namespace)["items"]
    deployment = sandbox.get("deployment", echo, "-n", namespace)
    assert rs["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]
    assert rs["metadata"]["name"] == f"echo-{rs['metadata']['labels']['pod-template-hash']}"
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        answer = get_json(f"http://{pod['status']['podIP']}:8080/")
        assert answer["pod"] == pod["metadata"]["name"] and answer["ip"] == pod["status"]["podIP"]
        assert answer["argv"][1:] == [f"{pod['status']['podIP']}:8080", "$(POD_IP)", "$(UNDEFINED)"]
        assert answer["config"] == "hello" and answer["version"] == "v1"
    status = deployment["status"]
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (2, 2, 2)
    cluster_ip = sandbox.get("service", echo, "-n", namespace)["spec"]["clusterIP"]
    assert cluster_ip.startswith("127.0.1.")
    seen = {get_json(f"http://{cluster_ip}:80/")["pod"] for _ in range(6)}
    assert seen == {p["metadata"]["name"] for p in pods}  # round-robin reaches both


def test_configmap_volume_follows_the_configmap(sandbox: Sandbox, namespace: str, echo: str):
    pod = ready_pods(sandbox, namespace, echo)[0]
    sandbox.kubectl("patch", "configmap", "echo-cfg", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"data": {"greeting": "bonjour"}}))
    started = time.monotonic()
    wait_until(lambda: get_json(f"http://{pod['status']['podIP']}:8080/")["config"] == "bonjour", timeout=10,
               what="the projected file to change")
    assert time.monotonic() - started < 5
    assert pod["metadata"]["name"] in {p["metadata"]["name"] for p in ready_pods(sandbox, namespace, echo)}


def test_a_killed_process_is_restarted(sandbox: Sandbox, namespace: str, echo: str):
    pod = ready_pods(sandbox, namespace, echo)[0]
    name, pid = pod["metadata"]["name"], pod_pid(pod)
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict | None:
        fresh = sandbox.get("pod", name, "-n", namespace)
        status = fresh["status"]["containerStatuses"][0]
        return fresh if status["restartCount"] == 1 and status["ready"] else None
    fresh = wait_until(restarted, timeout=20, what="the pod to restart and be ready again")
    assert pod_pid(fresh) != pid and not alive(pid)
    assert fresh["status"]["podIP"] == pod["status"]["podIP"]
    last = fresh["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] != 0


def test_rolling_update_keeps_serving_and_delete_cleans_up(sandbox: Sandbox, namespace: str, echo: str):
    old = {p["metadata"]["name"]: pod_pid(p) for p in ready_pods(sandbox, namespace, echo)}
    cluster_ip = sandbox.get("service", echo, "-n", namespace)["spec"]["clusterIP"]
    results, stop = _request_loop(f"http://{cluster_ip}:80/", lambda body: json.loads(body)["version"])
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=echo_deployment("echo", "v2"))
    sandbox.kubectl("rollout", "status", "-n", namespace, "deployment/echo", "--timeout=60s", timeout=70)
    time.sleep(0.5)
    stop.set()
    failures = [r for r in results if isinstance(r, Exception)]
    versions = [r for r in results if not isinstance(r, Exception)]
    assert failures == [] and "v1" in versions and versions[-1] == "v2", (failures[:3], len(versions))
    new = ready_pods(sandbox, namespace, echo)
    assert len(new) == 2 and not set(old) & {p["metadata"]["name"] for p in new}
    assert not any(alive(pid) for pid in old.values())
    replica_sets = sandbox.get("replicasets", "-n", namespace)["items"]
    assert sorted(rs["spec"]["replicas"] for rs in replica_sets) == [0, 2]
    new_pids = [pod_pid(p) for p in new]

    sandbox.kubectl("delete", "deployment", echo, "-n", namespace)
    wait_until(lambda: not sandbox.get("pods", "-n", namespace)["items"], what="pods to be garbage-collected")
    assert not sandbox.get("replicasets", "-n", namespace)["items"]
    wait_until(lambda: not any(alive(pid) for pid in new_pids), what="the pods' processes to stop")


def _request_loop(url: str, parse, limit: int = 3000, max_s: float = 120):
    """Requests `url` back to back on a thread until stopped (bounded in count and time)."""
    results: list = []
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + max_s
        while not stop.is_set() and len(results) < limit and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    results.append(parse(response.read()))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                results.append(exc)
            time.sleep(0.01)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    wait_until(lambda: results, what="the first answer of the request loop")
    return results, stop


# -- real TorchServe pods ---------------------------------------------------------------------------------
def torchserve_deployment(name: str, store: Path, version: str) -> str:
    args = ["-m", "model_handler.launcher", "serve", "--model-store", str(store), "--model", "plain=plain.mar",
            "--bind", "$(POD_IP)", "--inference-port", "$(INFERENCE_PORT)", "--management-port", "8081",
            "--metrics-port", "8082"]
    return deployment_yaml(name, f"""
      terminationGracePeriodSeconds: 20
      containers:
        - name: torchserve
          image: selfheal/torchserve:dev
          command: [python]
          args: {json.dumps(args)}
          ports: [{{name: inference, containerPort: 8080}}, {{name: management, containerPort: 8081}}]
          env:
            - {{name: MODEL_VERSION, value: "{version}"}}
            - {{name: INFERENCE_PORT, value: "8080"}}
            - name: POD_IP
              valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
          readinessProbe: {{httpGet: {{path: /ping, port: inference}}, periodSeconds: 1}}""", replicas=2) + \
        service_yaml(name, 8080, "inference")


def test_torchserve_deployment_rolls_over_under_load_without_losing_a_request(
        sandbox: Sandbox, namespace: str, tmp_path: Path):
    store, _ = build_plain_store(tmp_path)
    row = [120.0, 3.0, 40.0, 0.7]
    expected = expected_probabilities(tmp_path, [row])[0]
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=torchserve_deployment("ts", store, "1"))
    started = time.monotonic()
    sandbox.kubectl("rollout", "status", "-n", namespace, "deployment/ts", "--timeout=150s", timeout=160)
    first_start_s = time.monotonic() - started
    pods = ready_pods(sandbox, namespace, "ts")
    assert len(pods) == 2 and len({p["status"]["podIP"] for p in pods}) == 2
    body = json.dumps(dict(zip(FEATURES, row))).encode()

    def predict(url: str) -> list[float]:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def probabilities(answer: dict) -> list[float]:
        [one_row] = answer["probabilities"]
        return one_row

    for pod in pods:
        got = probabilities(predict(f"http://{pod['status']['podIP']}:8080/predictions/plain"))
        assert got == pytest.approx(expected, abs=1e-5)
    cluster_ip = sandbox.get("service", "ts", "-n", namespace)["spec"]["clusterIP"]
    service_url = f"http://{cluster_ip}:8080/predictions/plain"
    assert probabilities(predict(service_url)) == pytest.approx(expected, abs=1e-5)
    old_pids = {p["metadata"]["name"]: pod_pid(p) for p in pods}
    old_group = set(old_pids.values()).union(*(descendants(pid) for pid in old_pids.values()))
    assert len(old_group) >= 6  # per pod: launcher, ts.model_server, JVM, a Python worker

    results: list = []
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + 240
        while not stop.is_set() and len(results) < 20000 and time.monotonic() < deadline:
            try:
                results.append(probabilities(predict(service_url)))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                results.append(exc)
            time.sleep(0.005)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    started = time.monotonic()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=torchserve_deployment("ts", store, "2"))
    sandbox.kubectl("rollout", "status", "-n", namespace, "deployment/ts", "--timeout=200s", timeout=210)
    rollout_s = time.monotonic() - started
    time.sleep(1)
    stop.set()
    thread.join(timeout=40)
    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == [], f"{len(failures)} of {len(results)} requests failed: {failures[:3]}"
    assert len(results) > 50 and all(r == pytest.approx(expected, abs=1e-5) for r in results)
    new = ready_pods(sandbox, namespace, "ts")
    assert len(new) == 2 and not set(old_pids) & {p["metadata"]["name"] for p in new}
    wait_until(lambda: not any(alive(pid) for pid in old_group), what="old TorchServe pods' processes to stop")
    print(f"\nfirst start {first_start_s:.1f}s, rollout {rollout_s:.1f}s, {len(results)} requests, 0 failed")
    new_group = set().union(*({pod_pid(p)} | descendants(pod_pid(p)) for p in new))
    sandbox.kubectl("delete", "deployment", "ts", "-n", namespace)
    wait_until(lambda: not sandbox.get("pods", "-n", namespace)["items"], timeout=60,
               what="TorchServe pods to be removed")
    # the API drops GC'd Pods at once (no grace periods there); their processes drain and stop after
    wait_until(lambda: not [pid for pid in new_group if alive(pid)], timeout=40,
               what="the deleted Deployment's TorchServe processes to stop")


def test_sandbox_shutdown_stops_every_pod_process(tmp_path: Path, tool_paths):
    """`python -m sandbox up` then SIGTERM (what `down` sends): no pod process may outlive it."""
    workdir = tmp_path / "box"
    log = tmp_path / "sandbox.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "sandbox", "up", "--foreground", "--workdir", str(workdir)],
                                   cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    pids: set[int] = set()
    try:
        state = wait_until(lambda: (sandbox_server.read_state(workdir) or {}).get("pid") == process.pid
                           and sandbox_server.read_state(workdir), what="the sandbox to start")
        box = Sandbox(url=state["url"], workdir=workdir, env=sandbox_env.client_env(workdir),
                      kubectl_bin=str(tool_paths["kubectl"]))
        box.kubectl("create", "configmap", "echo-cfg", "--from-literal=greeting=hi")
        box.kubectl("apply", "-f", "-", input=echo_deployment("echo", "v1"))
        box.kubectl("rollout", "status", "deployment/echo", "--timeout=60s", timeout=70)
        pids = {pod_pid(p) for p in ready_pods(box, "default", "echo")}
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            # The node agents stop before the API server; pods must be gone well within `down`'s 15 s.
            wait_until(lambda: not [pid for pid in pids if alive(pid)], timeout=12,
                       what=f"the pod processes to stop (sandbox log: {log})")
        finally:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Known: a watch whose client left can outlive its cancellation on Python 3.11 (the
                # emulator's asyncio.wait_for), which delays the API's exit; `down` SIGKILLs it then.
                process.kill()
                process.wait()


def test_scale_and_rollout_undo(sandbox: Sandbox, namespace: str, echo: str):
    sandbox.kubectl("scale", "-n", namespace, "deployment/echo", "--replicas=3")
    sandbox.kubectl("rollout", "status", "-n", namespace, "deployment/echo", "--timeout=60s", timeout=70)
    assert len(ready_pods(sandbox, namespace, echo)) == 3
    sandbox.kubectl("set", "env", "-n", namespace, "deployment/echo", "VERSION=v2")
    sandbox.kubectl("rollout", "status", "-n", namespace, "deployment/echo", "--timeout=60s", timeout=70)
    ips = [p["status"]["podIP"] for p in ready_pods(sandbox, namespace, echo)]
    assert len(ips) == 3 and {get_json(f"http://{ip}:8080/")["version"] for ip in ips} == {"v2"}
    sandbox.kubectl("rollout", "undo", "-n", namespace, "deployment/echo")
    sandbox.kubectl("rollout", "status", "-n", namespace, "deployment/echo", "--timeout=60s", timeout=70)
    ips = [p["status"]["podIP"] for p in ready_pods(sandbox, namespace, echo)]
    assert {get_json(f"http://{ip}:8080/")["version"] for ip in ips} == {"v1"}
    replica_sets = sandbox.get("replicasets", "-n", namespace)["items"]
    assert len(replica_sets) == 2  # the first ReplicaSet came back, as revision 3
    back = next(rs for rs in replica_sets if rs["spec"]["replicas"] == 3)
    assert back["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def plain_deployment(name: str, container_extra: str, command: str = "[python, -c, 'import time; time.sleep(600)']"):
    return deployment_yaml(name, f"""
      containers:
        - name: main
          image: busybox
          command: {command}{container_extra}
""")


def test_failing_liveness_probe_kills_and_restarts_the_process(sandbox: Sandbox, namespace: str):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=plain_deployment(
        "sleeper", "\n          livenessProbe: {httpGet: {path: /, port: 9}, periodSeconds: 1, failureThreshold: 2}"))

    def restarted() -> dict | None:
        pods = sandbox.get("pods", "-n", namespace, "-l", "app=sleeper")["items"]
        statuses = [c for p in pods for c in (p.get("status") or {}).get("containerStatuses") or []]
        return next((c for c in statuses if c["restartCount"] >= 1), None)
    status = wait_until(restarted, timeout=20, what="the liveness probe to restart the process")
    assert status["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGKILL


def test_unsupported_pod_specs_are_reported_on_the_pod(sandbox: Sandbox, namespace: str):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=plain_deployment(
        "nodename", "\n          env: [{name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]"))
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=plain_deployment("nocmd", "", command="[]"))

    def message(app: str) -> str:
        pods = sandbox.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
        conditions = [c for p in pods for c in (p.get("status") or {}).get("conditions") or []]
        return next((c.get("message", "") for c in conditions if c.get("reason") == "CreateContainerConfigError"), "")
    assert "fieldRef 'spec.nodeName' is not supported" in wait_until(lambda: message("nodename"), what="the error")
    assert "runs `command`" in wait_until(lambda: message("nocmd"), what="the error")
    deployment = sandbox.get("deployment", "nodename", "-n", namespace)
    assert deployment["status"]["readyReplicas"] == 0
    assert deployment["status"]["conditions"][0]["status"] == "False"


def test_launcher_refuses_a_bind_address_that_is_not_ipv4(tmp_path: Path):
    (tmp_path / "plain.mar").write_bytes(b"")  # only its existence is checked before the address
    done = subprocess.run([sys.executable, "-m", "model_handler.launcher", "serve", "--model-store", str(tmp_path),
                           "--model", "plain=plain.mar", "--bind", "$(POD_IP)"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "bind address must be an IPv4 address, got '$(POD_IP)'" in done.stderr


def test_pods_that_cannot_start_say_why_in_their_container_statuses(sandbox: Sandbox, namespace: str):
    """What a kubelet reports for a pod that never serves: an image no registry serves waits in
    ErrImagePull/ImagePullBackOff (Pending, never started), a process that keeps exiting in
    CrashLoopBackOff with its last exit code, a spec that cannot run in CreateContainerConfigError."""
    sandbox.kubectl("apply", "-n", namespace, "-f", "-",
                    input=plain_deployment("nopull", "").replace("image: busybox", "image: registry.invalid/x:1"))
    sandbox.kubectl("apply", "-n", namespace, "-f", "-",
                    input=plain_deployment("crasher", "", command="[python, -c, 'import sys; sys.exit(3)']"))
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=plain_deployment("nocmd", "", command="[]"))

    def waiting(app: str, reasons: set[str]) -> tuple[dict, dict] | None:
        for pod in sandbox.get("pods", "-n", namespace, "-l", f"app={app}")["items"]:
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                if (container.get("state") or {}).get("waiting", {}).get("reason") in reasons:
                    return pod, container
        return None
    seen = set()
    for _ in range(2):   # ErrImagePull first, then the back-off
        pod, container = wait_until(lambda: waiting("nopull", {"ErrImagePull", "ImagePullBackOff"} - seen),
                                    timeout=20, what="an image pull failure")
        seen.add(container["state"]["waiting"]["reason"])
        assert pod["status"]["phase"] == "Pending" and not container["ready"] and not container["started"]
        assert "registry.invalid/x:1" in container["state"]["waiting"]["message"]
    pod, container = wait_until(lambda: waiting("crasher", {"CrashLoopBackOff"}), timeout=20, what="a crash loop")
    assert container["lastState"]["terminated"]["exitCode"] == 3 and container["restartCount"] >= 1
    assert not container["ready"]
    pod, container = wait_until(lambda: waiting("nocmd", {"CreateContainerConfigError"}), what="a config error")
    assert "runs `command`" in container["state"]["waiting"]["message"]
