"""The API and the node agents as separate processes (`up --no-node --persist` + `node`): the API
restarts on the same port with its objects, and the node, like a real kubelet, keeps running and
picks up work created after the restart."""
from __future__ import annotations

import socket

from sandbox import env as sandbox_env
from sandbox.server import NodeProcess, SandboxProcess
from sandbox_helpers import Sandbox
from test_kubelet_jobs import job_yaml


def test_the_api_restarts_under_a_running_node(tmp_path, tool_paths):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = SandboxProcess(tmp_path, port=port, persist=True, node=False)
    state = api.start()
    node = NodeProcess(tmp_path)
    try:
        node.start()
        box = Sandbox(url=state["url"], workdir=tmp_path, env=sandbox_env.client_env(tmp_path),
                      kubectl_bin=str(tool_paths["kubectl"]), helm_bin=str(tool_paths["helm"]))
        box.kubectl("create", "namespace", "kept")
        box.kubectl("create", "configmap", "job-config", "-n", "kept", "--from-literal=rules.yaml=rules: []")
        api.stop()
        assert box.kubectl("get", "namespaces", check=False).returncode != 0  # really down
        api = SandboxProcess(tmp_path, port=port, persist=True, node=False)
        assert api.start()["url"] == state["url"]
        assert node.process.poll() is None, "the node died with the API"
        assert box.get("configmap", "job-config", "-n", "kept")["data"] == {"rules.yaml": "rules: []"}
        box.kubectl("apply", "-n", "kept", "-f", "-", input=job_yaml("after", "print('ran')"))
        box.kubectl("wait", "-n", "kept", "--for=condition=complete", "job/after", "--timeout=60s")
    finally:
        node.stop()
        api.stop()
