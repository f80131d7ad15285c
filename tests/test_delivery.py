"""Model delivery in the pod specs the operator renders (operator/children.py): a plain path is
served as is; an fsspec URI is fetched by the storage-initializer init container into an emptyDir,
with the same credentials as the pod; pvc:// mounts the claim read-only. The heal Job reads the
same archive the same way (a .mar unpacked). End to end with S3: tests/operator/test_s3_e2e.py."""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shm_operator import children
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.status import full_spec

EXAMPLE_CR = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "selfhealingmodel.yaml"


def spec_with(archive: str, **storage) -> dict:
    spec = yaml.safe_load(EXAMPLE_CR.read_text())["spec"]
    spec["model"] = {**spec["model"], "archive": archive}
    spec["storage"] = {"uri": "s3://bucket/selfheal", **storage}
    return full_spec(spec)


def rendered(spec: dict) -> tuple[dict, dict]:
    config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
    deployment = children.deployment("fraud", "models", spec, "base")
    job = children.heal_job("fraud", "models", spec, job_name="fraud-heal-1", parent="base", version="v1", config=config)
    for obj in (deployment, job):
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    return deployment["spec"]["template"]["spec"], job["spec"]["template"]["spec"]


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_a_plain_path_is_served_in_place_without_an_init_container():
    serving, heal = rendered(spec_with("/var/lib/selfheal/models/fraud"))
    assert "initContainers" not in serving and "initContainers" not in heal
    args = serving["containers"][0]["args"]
    assert arg_after(args, "--model-store") == "/var/lib/selfheal/models" and arg_after(args, "--model") == "fraud=fraud"
    assert arg_after(heal["containers"][0]["args"], "--model-dir") == "/var/lib/selfheal/models/fraud"


@pytest.mark.parametrize("archive", ["s3://models/team/fraud", "s3://models/team/fraud/", "gs://m/fraud",
                                     "az://container/fraud", "file:///srv/models/fraud"])
def test_a_uri_is_fetched_into_an_empty_dir_with_the_pods_credentials(archive):
    serving, heal = rendered(spec_with(archive, secretName="s3-creds"))
    for pod, unpack in ((serving, False), (heal, True)):
        (init,) = pod["initContainers"]
        (main,) = pod["containers"]
        assert init["name"] == "storage-initializer" and init["image"] == main["image"]
        assert init["args"] == ["-m", "model_handler.fetch", archive.rstrip("/"), children.MODEL_DIR,
                                *(["--unpack"] if unpack else [])]
        assert init["envFrom"] == main["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        init_env = {e["name"]: e["value"] for e in init["env"]}
        assert init_env["HOME"] == children.HOME_DIR and init_env["SELFHEAL_STORAGE_URI"] == "s3://bucket/selfheal"
        assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"   # the reason shows in kubectl describe
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["model"] == {"name": "model", "emptyDir": {}}
        for container in (init, main):
            assert {"name": "model", "mountPath": children.MODEL_DIR} in container["volumeMounts"]
        assert pod["automountServiceAccountToken"] is False
    args = serving["containers"][0]["args"]
    assert arg_after(args, "--model-store") == children.MODEL_DIR and arg_after(args, "--model") == "fraud=fraud"
    assert arg_after(heal["containers"][0]["args"], "--model-dir") == f"{children.MODEL_DIR}/fraud"


def test_a_mar_is_served_as_a_file_and_unpacked_for_the_heal_job():
    serving, heal = rendered(spec_with("s3://models/fraud.mar"))
    assert arg_after(serving["containers"][0]["args"], "--model") == "fraud=fraud.mar"
    assert arg_after(heal["containers"][0]["args"], "--model-dir") == f"{children.MODEL_DIR}/fraud"


def test_a_pvc_is_mounted_read_only_and_nothing_is_copied():
    serving, heal = rendered(spec_with("pvc://model-store/team/fraud"))
    for pod in (serving, heal):
        assert "initContainers" not in pod
        assert {"name": "model", "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True}} in pod["volumes"]
        assert {"name": "model", "mountPath": children.PVC_DIR, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    args = serving["containers"][0]["args"]
    assert arg_after(args, "--model-store") == f"{children.PVC_DIR}/team" and arg_after(args, "--model") == "fraud=fraud"
    assert arg_after(heal["containers"][0]["args"], "--model-dir") == f"{children.PVC_DIR}/team/fraud"


def test_a_failed_storage_initializer_is_the_reason_a_heal_job_reports():
    from shm_operator import k8s
    failed = {"status": {"phase": "Failed", "initContainerStatuses": [{"name": "storage-initializer", "state": {
        "terminated": {"exitCode": 1, "message": "model archive not delivered: checksum file not found: s3://m/f.sha256"}}}],
        "containerStatuses": [{"name": "heal", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    assert k8s.init_failure(failed) == ("init container storage-initializer exited with 1: model archive not "
                                        "delivered: checksum file not found: s3://m/f.sha256")
    assert k8s.termination_message(failed) == ""
    ok = {"status": {"initContainerStatuses": [{"name": "storage-initializer",
                                                "state": {"terminated": {"exitCode": 0}}}]}}
    assert k8s.init_failure(ok) == "" and k8s.init_failure({}) == ""
