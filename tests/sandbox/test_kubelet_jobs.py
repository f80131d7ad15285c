"""The process kubelet's Job part: real kubectl creates Jobs, local subprocesses run them."""
from __future__ import annotations

import json
import os
import time

from sandbox_helpers import Sandbox, wait_until


def job_yaml(name: str, script: str, backoff: int = 0, extra_spec: str = "", container_extra: str = "") -> str:
    body = json.dumps(script)
    return f"""apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: {backoff}{extra_spec}
  template:
    spec:
      restartPolicy: Never
      volumes: [{{name: cfg, configMap: {{name: job-config}}}}]
      containers:
        - name: main
          image: selfheal/heal:dev
          command: [python, -c, {body}]
          args: [/etc/job/rules.yaml]
          env: [{{name: MODE, value: fast}}]
          volumeMounts: [{{name: cfg, mountPath: /etc/job}}]{container_extra}
"""


def _pods(sandbox: Sandbox, namespace: str, job: str) -> list[dict]:
    return sandbox.get("pods", "-n", namespace, "-l", f"job-name={job}")["items"]


def _config(sandbox: Sandbox, namespace: str) -> None:
    sandbox.kubectl("create", "configmap", "job-config", "-n", namespace, "--from-literal=rules.yaml=rules: []")


def test_job_runs_as_a_process_with_configmap_files_and_termination_message(sandbox: Sandbox, namespace):
    _config(sandbox, namespace)
    script = ("import json, os, sys\n"
              "rules = open(sys.argv[1]).read()\n"
              "print('working', flush=True)\n"
              "open('/dev/termination-log', 'w').write(json.dumps({'rules': rules, 'mode': os.environ['MODE']}))\n")
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=job_yaml("heal-1", script))
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/heal-1", "--timeout=30s")
    job = sandbox.get("job", "heal-1", "-n", namespace)
    assert (job["status"]["succeeded"], job["status"]["active"]) == (1, 0) and job["status"]["completionTime"]
    [pod] = _pods(sandbox, namespace, "heal-1")
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert json.loads(terminated["message"]) == {"rules": "rules: []", "mode": "fast"}
    log = sandbox.workdir / "pods" / namespace / pod["metadata"]["name"] / "main.log"
    assert log.read_text() == "working\n"
    assert sandbox.kubectl("logs", "-n", namespace, "job/heal-1").stdout == "working\n"  # served from that file
    sandbox.kubectl("delete", "job", "heal-1", "-n", namespace)
    wait_until(lambda: not _pods(sandbox, namespace, "heal-1"), what="the Job's pod to be garbage-collected")


def test_a_pod_waits_for_its_configmap_volume_like_on_a_kubelet(sandbox: Sandbox, namespace):
    """A ConfigMap volume created after the Job (an owner that needs the Job's uid first): the pod
    stays Pending, runs once it appears and reads it; one that never appears fails the Job at its
    deadline, as on a node."""
    script = "import sys\nopen('/dev/termination-log', 'w').write(open(sys.argv[1]).read())\n"
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=job_yaml("late-config", script))
    pod = wait_until(lambda: _pods(sandbox, namespace, "late-config"), what="the Job's pod")[0]
    time.sleep(1.5)
    [pod] = _pods(sandbox, namespace, "late-config")
    assert (pod.get("status") or {}).get("phase") in (None, "Pending"), pod.get("status")
    _config(sandbox, namespace)
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/late-config", "--timeout=30s")
    [pod] = _pods(sandbox, namespace, "late-config")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "rules: []"

    sandbox.kubectl("delete", "configmap", "job-config", "-n", namespace)
    started = time.monotonic()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=job_yaml(
        "no-config", script, extra_spec="\n  activeDeadlineSeconds: 2"))
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=failed", "job/no-config", "--timeout=30s")
    assert time.monotonic() - started < 15
    assert sandbox.get("job", "no-config", "-n", namespace)["status"]["conditions"][0]["reason"] == "DeadlineExceeded"


def test_failing_job_retries_up_to_the_backoff_limit(sandbox: Sandbox, namespace):
    _config(sandbox, namespace)
    script = "import sys\nprint('bad input: no rows', flush=True)\nsys.exit(3)\n"
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=job_yaml(
        "heal-2", script, backoff=1, container_extra="\n          terminationMessagePolicy: FallbackToLogsOnError"))
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=failed", "job/heal-2", "--timeout=30s")
    job = sandbox.get("job", "heal-2", "-n", namespace)
    assert job["status"]["failed"] == 2
    assert job["status"]["conditions"][0]["reason"] == "BackoffLimitExceeded"
    pods = _pods(sandbox, namespace, "heal-2")
    assert len(pods) == 2 and {p["status"]["phase"] for p in pods} == {"Failed"}
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["message"] == "bad input: no rows"


def test_deadline_kills_the_process_and_fails_the_job(sandbox: Sandbox, namespace):
    _config(sandbox, namespace)
    started = time.monotonic()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=job_yaml(
        "slow", "import time\ntime.sleep(60)\n", extra_spec="\n  activeDeadlineSeconds: 1"))
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=failed", "job/slow", "--timeout=30s")
    assert time.monotonic() - started < 15
    assert sandbox.get("job", "slow", "-n", namespace)["status"]["conditions"][0]["reason"] == "DeadlineExceeded"


def test_deleting_a_running_job_stops_its_process(sandbox: Sandbox, namespace, tmp_path):
    _config(sandbox, namespace)
    pid_file = tmp_path / "pid"
    script = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=job_yaml("stuck", script))
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="the Job's process to start"))
    assert _pods(sandbox, namespace, "stuck")[0]["status"]["phase"] == "Running"
    sandbox.kubectl("delete", "job", "stuck", "-n", namespace)

    def process_gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    wait_until(process_gone, what=f"process {pid} to be stopped")


def test_a_pod_without_command_fails_with_a_clear_message(sandbox: Sandbox, namespace):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input="""apiVersion: batch/v1
kind: Job
metadata: {name: nocmd}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox}]
""")
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=failed", "job/nocmd", "--timeout=30s")
    [pod] = _pods(sandbox, namespace, "nocmd")
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert "runs `command`" in message


def test_finished_jobs_are_deleted_after_their_ttl_also_when_it_is_set_later(sandbox: Sandbox, namespace):
    """The TTL-after-finished controller: a Job with `ttlSecondsAfterFinished` is deleted (its pods
    with it) that long after it finished; a TTL patched onto a finished Job counts from its end too."""
    _config(sandbox, namespace)
    sandbox.kubectl("apply", "-n", namespace, "-f", "-",
                    input=job_yaml("ttl-set", "print('done')", extra_spec="\n  ttlSecondsAfterFinished: 4"))
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/ttl-set", "--timeout=30s")
    finished = time.monotonic()   # at once, so that a loaded machine cannot eat the TTL before it is read
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=job_yaml("ttl-later", "print('done')"))
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/ttl-later", "--timeout=30s")
    gone = lambda job: sandbox.kubectl("get", "job", job, "-n", namespace, check=False).returncode != 0  # noqa: E731
    wait_until(lambda: gone("ttl-set"), timeout=20, what="the Job deleted after its TTL")
    assert time.monotonic() - finished > 0.5   # not at once: after the TTL
    wait_until(lambda: not _pods(sandbox, namespace, "ttl-set"), what="its pod garbage-collected")
    time.sleep(1)
    assert not gone("ttl-later")               # no TTL: kept
    sandbox.kubectl("patch", "job", "ttl-later", "-n", namespace, "--type", "merge",
                    "-p", '{"spec": {"ttlSecondsAfterFinished": 0}}')
    wait_until(lambda: gone("ttl-later"), timeout=10, what="the Job deleted once a TTL was set")


def test_a_job_container_is_prepared_as_a_deployment_pod_is(sandbox: Sandbox, namespace):
    """Jobs and Deployments share one container preparation: `$(VAR)` in env values and args, the
    downward API (`fieldRef`), an emptyDir shared with an init container, and the refusal of volume
    kinds the sandbox cannot provide."""
    _config(sandbox, namespace)
    script = ("import json, os, sys\n"
              "open('/dev/termination-log', 'w').write(json.dumps({'arg': sys.argv[1], 'derived': os.environ['DERIVED'],"
              " 'pod': os.environ['MY_POD'], 'ns': os.environ['MY_NS'], 'scratch': open('/scratch/seed').read()}))\n")
    extra = ("\n          env: [{name: MODE, value: fast}, {name: DERIVED, value: '$(MODE)-run'},"
             " {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}},"
             " {name: MY_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}]"
             "\n          volumeMounts: [{name: cfg, mountPath: /etc/job}, {name: scratch, mountPath: /scratch}]")
    body = job_yaml("prep-1", script).replace("          args: [/etc/job/rules.yaml]\n", "          args: ['$(DERIVED)']\n")
    body = body.replace("          env: [{name: MODE, value: fast}]\n", "").replace(
        "          volumeMounts: [{name: cfg, mountPath: /etc/job}]", extra.lstrip("\n"))
    body = body.replace("      volumes: [{name: cfg, configMap: {name: job-config}}]",
                        "      volumes: [{name: cfg, configMap: {name: job-config}}, {name: scratch, emptyDir: {}}]\n"
                        "      initContainers:\n"
                        "        - name: seed\n"
                        "          image: selfheal/heal:dev\n"
                        "          command: [python, -c, \"open('/scratch/seed', 'w').write('from init')\"]\n"
                        "          volumeMounts: [{name: scratch, mountPath: /scratch}]")
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=body)
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/prep-1", "--timeout=30s")
    [pod] = _pods(sandbox, namespace, "prep-1")
    message = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert message == {"arg": "fast-run", "derived": "fast-run", "pod": pod["metadata"]["name"], "ns": namespace,
                       "scratch": "from init"}

    refused = job_yaml("prep-2", "print('never')").replace(
        "      volumes: [{name: cfg, configMap: {name: job-config}}]",
        "      volumes: [{name: cfg, hostPath: {path: /etc}}]")
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=refused)
    sandbox.kubectl("wait", "-n", namespace, "--for=condition=failed", "job/prep-2", "--timeout=30s")
    [pod] = _pods(sandbox, namespace, "prep-2")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert "only configMap and emptyDir volumes are supported here" in terminated["message"], terminated
