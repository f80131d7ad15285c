"""Model and storage delivery end to end on S3: an S3-compatible server (moto in server mode) runs
as its own process, the model archive and the registry live in it, and nothing reaches the pods but
the `s3://` URIs and the credentials Secret.

- The operator gets its default storage from $SELFHEAL_STORAGE_URI (the chart's storage.uri): the
  SelfHealingModel names only `storage.secretName`.
- The serving pods and the heal Job start with the storage-initializer init container, which copies
  `s3://models/fraud` into an emptyDir, checked against `fraud.sha256`, with the Secret's credentials
  (envFrom); TorchServe and the heal Job read that copy.
- `kubectl wait --for=condition=Ready shm/fraud` gates on serving pods, drifted traffic makes a heal
  (its candidate lands in S3), the pods roll onto it, and a `kubectl patch` rolls back to base.
- A second model whose archive was changed after its checksum was written never starts TorchServe:
  the init container says why in the pod status.

Twice: with the sandbox's process pods (about 2.5 minutes), and with `--runtime podman` (marker
`images`; the pods and the Job as containers of the built model-server image, which must hold s3fs).
"""
from __future__ import annotations

import json
import shutil
import time

import pytest
import s3fs
import yaml

from examples.fraud.generator import World, labelled_rows
from model_handler.fetch import write_digest
from model_handler.registry import AdapterRegistry
from sandbox.loadgen import LoadLoop
from sandbox.s3 import S3Server
from sandbox_helpers import wait_until
from operator_process import OperatorProcess
from test_heal_loop import FAST, service_url
from test_reconcile import EXAMPLE, status_of

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]
STORAGE = "s3://selfheal/registry"


def s3_cr(name: str, archive: str, replicas: int = 2) -> str:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"]["model"]["archive"] = archive
    body["spec"]["storage"] = {"secretName": "s3-creds"}   # the uri: the operator's default
    body["spec"].update(FAST, replicas=replicas)
    return yaml.safe_dump(body)


def test_s3_archive_and_storage_heal_rollout_rollback(sandbox, namespace, model_dir, tmp_path, monkeypatch, capsys):
    deliver_heal_roll_back(sandbox, namespace, model_dir, tmp_path, monkeypatch, capsys, "process pods")


@pytest.mark.images
@pytest.mark.timeout(900)
def test_s3_delivery_in_containers(model_dir, tmp_path, monkeypatch, capsys):
    """The same with `--runtime podman`: the storage-initializer, TorchServe and the heal Job run as
    containers of the model-server image (read-only root, uid 10001), which must hold s3fs."""
    from images_support import build_images
    from examples.cluster import SelfhealCluster
    from sandbox import tools
    from operator_process import sandbox_view

    build_images()
    paths = tools.install(tmp_path / "bin")
    with SelfhealCluster(tmp_path / "cluster", namespace="s3", runtime="podman",
                         kubectl_bin=str(paths["kubectl"])).start() as cluster:
        box = sandbox_view(cluster, str(paths["helm"]))
        workdir = box.workdir
        deliver_heal_roll_back(box, "s3", model_dir, tmp_path, monkeypatch, capsys, "podman containers")
        # each storage-initializer ran as a container: its termination log was opened to the container's
        # user and the model emptyDir given to uid 10001 (the process runtime leaves both to root, 0644)
        pod_dirs = [d for d in (workdir / "pods" / "s3").iterdir() if d.name.startswith("fraud-")]
        inits = [d for d in pod_dirs if (d / "termination-log-storage-initializer").exists()]
        assert any(d.name.startswith("fraud-heal-") for d in inits) and len(inits) >= 3, sorted(d.name for d in pod_dirs)
        for pod_dir in inits:
            assert (pod_dir / "termination-log-storage-initializer").stat().st_mode & 0o777 == 0o666, pod_dir
        kept = [d for d in inits if (d / "volumes" / "model").exists()]
        assert kept and all((d / "volumes" / "model").stat().st_uid == 10001 for d in kept), kept


def deliver_heal_roll_back(sandbox, namespace, model_dir, tmp_path, monkeypatch, capsys, runtime) -> None:
    started = time.monotonic()
    archive = tmp_path / "upload" / "fraud"
    shutil.copytree(model_dir, archive, ignore=shutil.ignore_patterns("__pycache__"))
    write_digest(archive)
    with S3Server(log_path=tmp_path / "moto.log") as s3:
        for key, value in s3.env.items():   # this process reads the registry too
            monkeypatch.setenv(key, value)
        # fsspec caches filesystems by their arguments, not by the endpoint they read from the
        # environment: without this the registry below still talked to the previous test's server
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3.filesystem()
        for bucket in ("models", "selfheal"):
            s3.make_bucket(bucket)
        fs.put(str(archive), "models/fraud", recursive=True)
        fs.put(str(archive) + ".sha256", "models/fraud.sha256")
        fs.put(str(archive), "models/tampered", recursive=True)   # the same model, then changed
        fs.pipe("models/tampered.sha256", (archive.parent / "fraud.sha256").read_bytes())
        fs.pipe("models/tampered/reference.json", b"{}")

        secret = s3.secret("s3-creds")
        sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
        operator = OperatorProcess(sandbox, namespace, tmp_path).start(SELFHEAL_STORAGE_URI=STORAGE, **s3.env)
        try:
            run(sandbox, namespace, operator, capsys, started, runtime)
        finally:
            operator.stop()
            # the finalizer keeps the models (and their pods, the tampered one crash-looping) once
            # the operator is gone: stop the pods, or they outlive this S3 server in a shared sandbox
            sandbox.kubectl("delete", "deployments,jobs", "--all", "-n", namespace, "--wait=false", check=False)
        log = operator.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[log.index("Traceback") - 500:][:4000]
        assert not operator.calls_denied_by_chart()


def run(sandbox, namespace, operator, capsys, started, runtime) -> None:
    def wait_status(predicate, timeout, what, name="fraud"):
        try:
            return wait_until(lambda: (s := status_of(sandbox, namespace, name)) and predicate(s) and s,
                              timeout=timeout, interval=1.0, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}\nstatus: {json.dumps(status_of(sandbox, namespace, name))[:3000]}\n"
                                 f"operator log:\n{operator.tail()}") from None

    def wait_ready(timeout=180):
        sandbox.kubectl("wait", "-n", namespace, "--for=condition=Ready", "shm/fraud", f"--timeout={timeout}s",
                        timeout=timeout + 10)

    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=s3_cr("fraud", "s3://models/fraud"))
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=s3_cr("tampered", "s3://models/tampered", replicas=1))
    wait_ready()
    wait_status(lambda s: (s.get("adapter") or {}).get("ready") == "2/2", 180, "2 ready pods serving base")
    timeline = {"serving": time.monotonic()}
    pods = sandbox.get("pods", "-n", namespace, "-l", "selfheal.io/model=fraud,selfheal.io/component=serving")["items"]
    for pod in pods:
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["name"] == "storage-initializer" and init["state"]["terminated"]["exitCode"] == 0
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["SELFHEAL_STORAGE_URI"] == STORAGE   # the operator's default, not file://
        assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(pod["spec"])   # only through the Secret

    loop = LoadLoop(service_url(sandbox, namespace), labelled_rows(World(amount_unit=100.0, distance_unit=1000.0), 7),
                    clients=2, max_seconds=300).start()
    try:
        status = wait_status(lambda s: (s.get("lastHeal") or {}).get("result") not in (None, "Running"), 180,
                             "the heal Job's result")
        timeline["healed"] = time.monotonic()
        assert status["lastHeal"]["result"] == "Promoted", json.dumps(status["lastHeal"])
        version = status["lastHeal"]["version"]
        (job_pod,) = sandbox.get("pods", "-n", namespace, "-l", f"job-name={status['lastHeal']['job']}")["items"]
        assert job_pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        wait_status(lambda s: (s.get("adapter") or {}).get("current") == version and s["adapter"].get("ready") == "2/2",
                    180, f"all pods on {version}")
        wait_ready()
        timeline["rolled_out"] = time.monotonic()
        sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge",
                        "-p", json.dumps({"spec": {"adapter": {"version": "base"}}}))
        wait_status(lambda s: (s.get("adapter") or {}).get("current") == "base" and s["adapter"].get("ready") == "2/2",
                    180, "pods back on base")
        wait_ready()
        timeline["rolled_back"] = time.monotonic()
    finally:
        loop.stop()
    assert loop.summary()["failed"] == 0, [a for a in loop.answers if not a.ok][:5]
    history = status_of(sandbox, namespace)["history"]
    assert [(h["version"], h["by"]) for h in history[-2:]] == [(version, "operator"), ("base", "user")]
    meta = AdapterRegistry(STORAGE, namespace, "fraud").meta(version)   # the candidate is in S3
    assert meta.labels_used == 0 and meta.version == version

    # The tampered archive: TorchServe never starts; the init container's message says why.
    (pod,) = sandbox.get("pods", "-n", namespace, "-l", "selfheal.io/model=tampered")["items"]
    (init,) = pod["status"]["initContainerStatuses"]
    message = ((init.get("lastState") or {}).get("terminated") or {}).get("message", "")
    assert "s3://models/tampered/reference.json: sha256" in message and "does not match" in message, init
    assert pod["status"]["phase"] == "Pending"
    start = timeline.pop("serving")
    with capsys.disabled():
        print(f"\n[s3 e2e, {runtime}] serving after {start - started:.1f}s; " + ", ".join(
            f"{k} +{v - start:.1f}s" for k, v in timeline.items()) + f"; {loop.summary()['requests']} requests, 0 failed")
