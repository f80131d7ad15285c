"""sandbox/podman.py: a pod's securityContext, volumes, env and command as `podman run` arguments
(pure translation; tests/test_images.py runs the result in real containers)."""
from __future__ import annotations

import os

import pytest

from sandbox.podman import Mount, pod_container, run_args, security_args
from sandbox.pods import PodSpecError
from shm_operator import children
from shm_operator.status import full_spec


def test_the_operators_security_context_becomes_podman_flags():
    args = security_args(children.pod_security_context(), children.container_security_context())
    assert "--user=10001:10001" in args and "--group-add=10001" in args
    assert {"--read-only", "--read-only-tmpfs=false", "--security-opt=no-new-privileges", "--cap-drop=ALL"} <= set(args)
    assert not any("seccomp" in a for a in args)  # RuntimeDefault: podman's default profile


@pytest.mark.parametrize(("pod", "container", "named"), [
    ({}, {"seLinuxOptions": {"level": "s0"}}, "seLinuxOptions"),
    ({"sysctls": []}, {}, "sysctls"),
    ({}, {"seccompProfile": {"type": "Localhost"}}, "Localhost"),
    ({}, {"runAsNonRoot": True, "runAsUser": 0}, "runAsNonRoot"),
])
def test_what_the_runtime_cannot_apply_is_refused_by_name(pod, container, named):
    with pytest.raises(PodSpecError, match=named):
        security_args(pod, container)


def test_run_as_non_root_checks_the_images_user_when_no_uid_is_given():
    assert security_args({}, {"runAsNonRoot": True}, image_user_of=lambda: "10001:10001") == []
    with pytest.raises(PodSpecError, match="'root'"):
        security_args({}, {"runAsNonRoot": True}, image_user_of=lambda: "")


def test_the_operators_serving_pod_translates_with_volumes_env_and_ports(tmp_path):
    spec = full_spec({"model": {"archive": "/srv/models/store/fraud", "image": "example/model-server:1"},
                      "features": ["a", "b"], "classes": ["x", "y"], "storage": {"uri": "file:///srv/storage"}})
    template = children.deployment("fraud", "ns", spec, "base")["spec"]["template"]
    pod = {"metadata": {"name": "fraud-serving-1", "namespace": "ns", "uid": "u1"}, "spec": template["spec"]}
    config_maps = {children.rules_name("fraud"): children.rules_configmap("fraud", spec)}
    translated = pod_container(pod, "c1", tmp_path, "127.0.0.9", config_maps, shared=["/srv/models"])
    args = translated.args
    image_at = args.index("example/model-server:1")
    assert args[image_at - 1] == "--entrypoint=python"
    assert args[image_at + 1:image_at + 3] == ["-m", "model_handler.launcher"]
    assert "--bind" in args and args[args.index("--bind") + 1] == "127.0.0.9"  # $(POD_IP) expanded
    assert f"--volume={tmp_path}/volumes/rules:{children.RULES_DIR}:ro" in args
    assert (tmp_path / "volumes" / "rules" / "rules.yaml").read_text() == \
        config_maps[children.rules_name("fraud")]["data"]["rules.yaml"]
    assert f"--volume={tmp_path}/volumes/tmp:{children.TMP_DIR}:rw" in args
    assert os.stat(tmp_path / "volumes" / "tmp").st_uid == 10001  # emptyDir given to the pod's user
    assert "--volume=/srv/models:/srv/models:rw" in args
    assert f"--env=TMPDIR={children.TMP_DIR}" in args and "--env=POD_IP=127.0.0.9" in args
    assert "--network=host" in args and "--pull=never" in args


def test_memory_empty_dirs_are_tmpfs_and_a_missing_volume_is_named(tmp_path):
    container = {"name": "c", "image": "i", "command": ["sh"], "volumeMounts": [{"name": "scratch", "mountPath": "/s"}]}
    pod = {"metadata": {"name": "p", "namespace": "n", "uid": "u"},
           "spec": {"containers": [container], "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}]}}
    assert "--tmpfs=/s:rw,mode=1777" in pod_container(pod, "c", tmp_path, "127.0.0.2", {}).args
    pod["spec"]["volumes"] = []
    with pytest.raises(PodSpecError, match="'scratch' names no volume"):
        pod_container(pod, "c", tmp_path, "127.0.0.2", {})


def test_args_without_command_run_the_images_entrypoint():
    args = run_args("n", "img", {"name": "c", "args": ["--x"]}, {}, {}, [Mount(None, "/tmp")], ["--x"])
    assert args[-2:] == ["img", "--x"] and not any(a.startswith("--entrypoint") for a in args)
    with pytest.raises(PodSpecError, match="has no image"):
        run_args("n", "", {"name": "c"}, {}, {}, [], [])


def test_the_storage_initializer_translates_with_the_pods_volume_and_the_secrets_env(tmp_path):
    """--runtime podman runs each init container as its own `podman run` of its image, with the
    emptyDir the main container mounts and envFrom's Secret keys (sandbox/containers.py)."""
    import base64
    from sandbox.pods import secret_key
    spec = full_spec({"model": {"archive": "s3://models/fraud", "image": "example/model-server:1"},
                      "features": ["a", "b"], "classes": ["x", "y"],
                      "storage": {"uri": "s3://b/p", "secretName": "s3-creds"}})
    template = children.deployment("fraud", "ns", spec, "base")["spec"]["template"]
    pod = {"metadata": {"name": "fraud-serving-1", "namespace": "ns", "uid": "u1"}, "spec": template["spec"]}
    config_maps = {children.rules_name("fraud"): children.rules_configmap("fraud", spec),
                   secret_key("s3-creds"): {"data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"key").decode()}}}
    (init,) = template["spec"]["initContainers"]
    translated = pod_container(pod, "c1-init0", tmp_path, "127.0.0.9", config_maps, container=init)
    args = translated.args
    image_at = args.index("example/model-server:1")
    assert args[image_at + 1:] == ["-m", "model_handler.fetch", "s3://models/fraud", children.MODEL_DIR]
    assert f"--volume={tmp_path}/volumes/model:{children.MODEL_DIR}:rw" in args
    assert "--env=AWS_ACCESS_KEY_ID=key" in args and "--read-only" in args
    assert translated.termination_log == tmp_path / "termination-log-storage-initializer"
    main = pod_container(pod, "c1", tmp_path, "127.0.0.9", config_maps)
    assert f"--volume={tmp_path}/volumes/model:{children.MODEL_DIR}:rw" in main.args   # the same directory
    assert main.termination_log == tmp_path / "termination-log"
    with pytest.raises(PodSpecError, match="envFrom secret 's3-creds' not found"):
        pod_container(pod, "c1-init0", tmp_path, "127.0.0.9", {children.rules_name("fraud"): config_maps[
            children.rules_name("fraud")]}, container=init)
