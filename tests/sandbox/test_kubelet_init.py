"""Init containers and envFrom in the process kubelet, as the storage-initializer needs them: init
containers run in order to success before the main container (Deployment pods: a failed one is
restarted with backoff and the pod stays not Ready; Job pods: a failed one fails the pod), they share
the pod's emptyDir volumes with it, and envFrom projects a Secret's or ConfigMap's keys."""
from __future__ import annotations

import json

from sandbox_helpers import Sandbox, deployment_yaml, wait_until

WRITE = "import os, sys; open(sys.argv[1], 'w').write(os.environ['TOKEN'] + ':' + os.environ['GREETING'])"
READ_SERVE = """
import http.server, os
body = open('/model/token').read().encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()
"""
FAIL = "import sys; open('/dev/termination-log', 'w').write('archive missing'); sys.exit(3)"


def sources(sandbox: Sandbox, namespace: str) -> None:
    sandbox.kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=TOKEN=s3cr3t")
    sandbox.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=GREETING=hello")


def pod_spec(init_script: str, main: str) -> str:
    return f"""
      volumes: [{{name: model, emptyDir: {{}}}}]
      initContainers:
        - name: fetch
          image: selfheal/model-server:dev
          command: [python, -c, {json.dumps(init_script)}]
          args: [/model/token]
          envFrom: [{{secretRef: {{name: creds}}}}, {{configMapRef: {{name: settings}}}}]
          volumeMounts: [{{name: model, mountPath: /model}}]
      containers:
        - name: main
          image: selfheal/model-server:dev
{main}"""


def test_a_deployment_pod_starts_after_its_init_container_and_sees_what_it_wrote(sandbox: Sandbox, namespace):
    sources(sandbox, namespace)
    main = f"""          command: [python, -c, {json.dumps(READ_SERVE)}]
          env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
          volumeMounts: [{{name: model, mountPath: /model}}]"""
    for name, script in (("good", WRITE), ("bad", FAIL)):
        sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=deployment_yaml(name, pod_spec(script, main)))

    def ready_pod(app: str) -> dict | None:
        pods = sandbox.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
        return next((p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in p.get("status", {}).get("conditions", []))), None)
    pod = wait_until(lambda: ready_pod("good"), timeout=30, what="the pod to be Ready after its init container")
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["name"] == "fetch" and init["state"]["terminated"]["exitCode"] == 0 and init["ready"]
    import urllib.request
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/", timeout=5) as answer:
        assert answer.read() == b"s3cr3t:hello"   # the Secret and ConfigMap via envFrom, the emptyDir shared

    def failing_init() -> dict | None:
        pods = sandbox.get("pods", "-n", namespace, "-l", "app=bad")["items"]
        statuses = [s for p in pods for s in (p.get("status") or {}).get("initContainerStatuses") or []]
        return next((s for s in statuses if s["restartCount"] >= 1), None)
    status = wait_until(failing_init, timeout=30, what="the failing init container to be restarted")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["message"] == "archive missing"
    (pod,) = sandbox.get("pods", "-n", namespace, "-l", "app=bad")["items"]
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Initialized"] == "False" and conditions["Ready"] == "False"
    assert pod["status"]["phase"] == "Pending"
    assert not (sandbox.workdir / "pods" / namespace / pod["metadata"]["name"] / "main.log").exists()


def test_a_job_runs_its_init_container_first_and_fails_when_it_fails(sandbox: Sandbox, namespace):
    sources(sandbox, namespace)
    main = f"""          command: [python, -c, {json.dumps("open('/dev/termination-log', 'w').write(open('/model/token').read())")}]
          volumeMounts: [{{name: model, mountPath: /model}}]"""
    for name, script in (("job-good", WRITE), ("job-bad", FAIL)):
        sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=f"""apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never{pod_spec(script, main)}""")
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/job-good", "--timeout=30s")
    (pod,) = sandbox.get("pods", "-n", namespace, "-l", "job-name=job-good")["items"]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "s3cr3t:hello"
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=failed", "job/job-bad", "--timeout=30s")
    (pod,) = sandbox.get("pods", "-n", namespace, "-l", "job-name=job-bad")["items"]
    assert pod["status"]["phase"] == "Failed"
    init = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert (init["exitCode"], init["message"]) == (3, "archive missing")
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_a_pod_never_kills_a_process_that_reused_one_of_its_pids(tmp_path):
    """The pod remembers (pid, start time), not pids: a pid the kernel gave to another process after
    the pod's own exited is left alone."""
    import subprocess
    import sys

    from sandbox.pods import PodProcess, identities, same_process

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        (mine,) = identities({other.pid})
        reused = (other.pid, mine[1] - 1)      # the same pid, as an earlier process had it
        assert same_process(mine) and not same_process(reused)
        pod = PodProcess.__new__(PodProcess)
        pod.uid, pod.process = "no-such-pod", None
        pod.known_descendants = {reused, (gone.pid, 1)}
        pod._kill_leftovers()
        assert other.poll() is None, "the pod killed a process it did not start"
        assert pod.known_descendants == set()
    finally:
        other.kill()
        other.wait()
