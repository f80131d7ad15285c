"""docs/quickstart.md, checked here (no cluster): its marked blocks parse, they are exactly the steps
tests/operator/test_real_cluster.py runs, in the same order, and the blocks that need no cluster run
as written: the model is trained and uploaded with its checksum to an S3 server (moto) and passes
the storage-initializer's check, the curl body is answered by that model as the doc shows, the
SelfHealingModel and `helm template` with the install block's values agree with what the other
blocks create (bucket, Secret, images), and every `kubectl wait --for=jsonpath` path is in the CRD."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from quickstart_support import DOC, REPO_ROOT, Shell, steps

DOC_TEXT = DOC.read_text()
STEPS = {s.name: s for s in steps()}
OPERATOR_IMAGE, MODEL_IMAGE = "ghcr.io/selfheal/operator:0.1.0", "ghcr.io/selfheal/model-server:0.1.0"
MANIFEST = REPO_ROOT / "examples" / "quickstart" / "fraud.yaml"


def real_cluster_test():
    spec = importlib.util.spec_from_file_location("quickstart_real_cluster",
                                                  REPO_ROOT / "tests" / "operator" / "test_real_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_cluster_steps() -> dict[str, str]:
    return real_cluster_test().STEPS


def exports(step_name: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(\S+)", STEPS[step_name].code, re.M))


# ---- the doc and the real-cluster test agree ---------------------------------------------------

def test_the_real_cluster_test_runs_every_block_in_the_docs_order():
    planned = real_cluster_steps()
    assert list(planned) == list(STEPS), "a quickstart block the real-cluster test does not know, or another order"
    for name, step in STEPS.items():
        assert (planned[name] == "background") == step.background, name
    assert set(planned.values()) <= {"run", "background", "kind", "cleanup", "kind-cleanup"}


def test_the_real_cluster_tests_readers_understand_the_blocks_and_the_traffic_output():
    real = real_cluster_test()
    assert real.forwarded_port(STEPS["storage-forward"]) == 9000
    assert real.forwarded_port(STEPS["serving-forward"]) == 8080
    assert real.forwarded_port(STEPS["traffic"]) is None
    lines = ("t=   10s  requests=  812  failed=  0  accuracy=0.044  adapters=base\n"
             "t=   20s  requests=  790  failed=  0  accuracy=0.991  adapters=v1\n"
             + json.dumps({"summary": {"failed": 0}, "last_30s": {}}) + "\n")
    assert [p["accuracy"] for p in real.progress(lines)] == [0.044, 0.991]
    real.check_traffic(lines)
    with pytest.raises(AssertionError):
        real.check_traffic(lines.replace("0.991", "0.500"))
    real.check("rollback", "patched\ncondition met\nv1 (by operator)\nbase (by user)\n")
    real.check("predict", '{"probabilities": [[0.1, 0.9]], "label": ["fraud"], "adapter_version": "base"}')


def test_a_marker_without_its_block_or_a_name_used_twice_is_an_error():
    block = "<!-- quickstart:step a -->\n```bash\necho a\n```\n"
    assert [s.name for s in steps(block)] == ["a"]
    with pytest.raises(ValueError, match="precede"):
        steps(block + "<!-- quickstart:step b -->\ntext\n```bash\necho b\n```\n")
    with pytest.raises(ValueError, match="twice"):
        steps(block + block)


@pytest.mark.parametrize("name", list(STEPS))
def test_every_block_is_valid_bash(name):
    result = subprocess.run(["bash", "-n"], input=STEPS[name].code, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_jsonpath_the_doc_waits_on_is_in_the_crd():
    crd = yaml.safe_load((REPO_ROOT / "crds" / "selfhealingmodels.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    paths = set(re.findall(r"[{ ]\.(status\.[\w.\[\]*]+)", DOC_TEXT))
    assert {"status.lastHeal.result", "status.adapter.current", "status.history[*]"} <= paths
    for path in paths:
        node = schema
        for part in path.replace("[*]", "").split("."):
            node = node.get("items", node)["properties"][part]
    # and the fields the range over history prints
    history = schema["properties"]["status"]["properties"]["history"]["items"]["properties"]
    assert {"version", "by"} <= set(history)


def test_the_sample_kubectl_get_output_has_the_crds_columns():
    crd = yaml.safe_load((REPO_ROOT / "crds" / "selfhealingmodels.yaml").read_text())
    columns = [c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
               if not c.get("priority")]
    (header,) = [line for line in DOC_TEXT.splitlines() if line.startswith("NAME ")]
    assert header.split() == ["NAME", *columns]


def test_the_patches_are_valid_json_and_name_an_adapter_version():
    for name, version in (("rollback", "base"), ("rollforward", "v1")):
        (line,) = [l for l in STEPS[name].code.splitlines() if l.startswith("kubectl patch")]
        argv = shlex.split(line)
        patch = json.loads(argv[argv.index("-p") + 1].replace("$HEALED", version))
        assert patch == {"spec": {"adapter": {"version": version}}}


# ---- what the blocks create agrees --------------------------------------------------------------

def test_the_minio_manifest_matches_the_secret_the_endpoint_and_the_port_forward():
    docs = list(yaml.safe_load_all((REPO_ROOT / "examples" / "quickstart" / "minio.yaml").read_text()))
    deployment, service = (next(d for d in docs if d["kind"] == kind) for kind in ("Deployment", "Service"))
    env = exports("env")
    host, port = re.match(r"http://([^:]+):(\d+)$", env["S3_IN_CLUSTER"]).groups()
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert f"svc/{service['metadata']['name']} {port}:{port}" in STEPS["storage-forward"].code
    assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "minio-root"}}]
    assert "secret generic minio-root -n minio" in STEPS["storage"].code
    assert deployment["metadata"]["namespace"] == "minio" and "namespace minio" in STEPS["storage"].code
    assert len(env["AWS_SECRET_ACCESS_KEY"]) >= 8   # MinIO refuses a shorter root password


def test_the_model_manifest_is_valid_and_names_what_the_other_steps_create(monkeypatch):
    from shm_operator.crd import SelfHealingModelSpec

    install = shlex.split(STEPS["install"].code.replace("\\\n", " "))
    values = dict(v.split("=", 1) for v, flag in zip(install[1:], install) if flag == "--set")
    monkeypatch.setenv("SELFHEAL_STORAGE_URI", values["storage.uri"])   # what the chart gives the operator
    body = yaml.safe_load(MANIFEST.read_text())
    assert f"kubectl apply -n fraud -f {MANIFEST.relative_to(REPO_ROOT)}" in STEPS["model"].code
    assert body["metadata"]["name"] == "fraud" and "shm/fraud" in STEPS["model"].code
    spec = SelfHealingModelSpec.model_validate(body["spec"]).model_dump(mode="json", by_alias=True)
    assert spec["model"]["archive"] == "s3://selfheal/models/fraud"
    assert "fs.put(\"build/quickstart/store/fraud\", \"selfheal/models/fraud\"" in STEPS["upload"].code
    assert spec["model"]["image"] == MODEL_IMAGE and MODEL_IMAGE in STEPS["load"].code
    assert spec["storage"] == {"uri": "s3://selfheal/registry", "secretName": "s3-creds"}
    assert "mkdir('selfheal')" in STEPS["bucket"].code and "secret generic s3-creds" in STEPS["bucket"].code
    assert "for ns in selfheal-system fraud" in STEPS["bucket"].code
    assert values["storage.secretName"] == "s3-creds"
    assert spec["promotion"]["strategy"] == "HotSwap"   # a port-forward survives the heal (see the file)
    rules = yaml.safe_load((REPO_ROOT / "examples" / "fraud" / "rules.yaml").read_text())["rules"]
    assert {r["name"]: r["when"] for r in body["spec"]["rules"]} == {r["name"]: r["when"] for r in rules}


def test_helm_template_with_the_install_values_runs_the_loaded_operator_image_on_the_s3_registry(tmp_path):
    from sandbox import tools

    helm = tools.install(tmp_path / "bin")["helm"]
    command = STEPS["install"].code.replace("\\\n", " ").splitlines()[0]
    argv = shlex.split(command)
    assert argv[:2] == ["helm", "install"] and argv[2:4] == ["selfheal", "charts/selfheal"]
    argv = [str(helm), "template", *[a for a in argv[2:] if a != "--wait"]]
    rendered = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    assert deployment["metadata"]["namespace"] == "selfheal-system"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == OPERATOR_IMAGE and OPERATOR_IMAGE in STEPS["load"].code
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SELFHEAL_STORAGE_URI"] == "s3://selfheal/registry"
    assert {"secretRef": {"name": "s3-creds"}} in container["envFrom"]


# ---- the blocks that need no cluster, run as written ---------------------------------------------

def test_train_and_upload_as_written_then_the_storage_initializer_accepts_the_archive(tmp_path):
    """`env`, `python` (make dry-run), `bucket` (kubectl recorded), `train` and `upload` in a scratch
    directory, with the doc's variables, against moto instead of MinIO; then the model answers the
    doc's curl body as the doc shows."""
    from model_handler.service import ModelService, ServiceConfig
    from sandbox.s3 import S3Server

    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(REPO_ROOT / ".venv")
    (work / "examples").symlink_to(REPO_ROOT / "examples")
    shims = tmp_path / "bin"
    shims.mkdir()
    make = shutil.which("make") or "make"   # the real one: the shim must not call itself
    (shims / "make").write_text(f"#!/bin/sh\nexec {make} -C {shlex.quote(str(REPO_ROOT))} -n \"$@\"\n")
    (shims / "kubectl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'kubectl.calls'}\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    shell = Shell(tmp_path / "shell", cwd=work, env={"PATH": f"{shims}:{os.environ['PATH']}"})
    with S3Server(log_path=tmp_path / "moto.log") as s3:
        shell.run(STEPS["env"], overrides={"AWS_ENDPOINT_URL": s3.endpoint})   # moto, not MinIO's port-forward
        shell.run(STEPS["python"])
        shell.run(STEPS["bucket"])
        shell.run(STEPS["train"], timeout=300)
        uploaded = shell.run(STEPS["upload"], timeout=300)
        assert "selfheal/models/fraud/model.safetensors" in uploaded, uploaded
        check = work / "build" / "quickstart" / "check" / "fraud"   # fetch copies the archive into DEST/<name>
        assert (check / "model.safetensors").is_file() and (check / "handler.py").is_file()

    calls = (tmp_path / "kubectl.calls").read_text().splitlines()
    for ns in ("selfheal-system", "fraud"):
        assert f"create namespace {ns}" in calls
        (secret,) = [c for c in calls if c.startswith(f"create secret generic s3-creds -n {ns}")]
        assert f"--from-literal=AWS_ENDPOINT_URL={exports('env')['S3_IN_CLUSTER']}" in secret
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            assert f"--from-literal={key}=" in secret

    body = shlex.split(STEPS["predict"].code.replace("\\\n", " "))
    payload = body[body.index("-d") + 1]
    service = ModelService.from_model_dir(check, ServiceConfig(model_name="fraud"))
    answer = service.predict(payload.encode())
    shown = json.loads(re.search(r"```json\n(.*?)\n```", DOC_TEXT, re.S)[1])
    assert set(answer) == set(shown) and answer["label"] == shown["label"] == ["fraud"]
    assert answer["adapter_version"] == shown["adapter_version"] == "base"
    features = yaml.safe_load(MANIFEST.read_text())["spec"]["features"]
    assert list(json.loads(payload)) == features   # every feature, in spec order


def test_the_traffic_block_runs_against_a_loopback_model(tmp_path, capsys, model_dir):
    """The traffic block's command line, with its URL pointed at a plain HTTP server answering with
    the model (TorchServe's place) and 3 seconds instead of 20 minutes."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from examples.quickstart import traffic
    from model_handler.service import ModelService, ServiceConfig

    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud"))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                answer = json.dumps(service.predict(body)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = shlex.split(STEPS["traffic"].code)
        assert argv[:3] == ["python", "-m", "examples.quickstart.traffic"]
        args = argv[3:]
        args[args.index("--url") + 1] = f"http://127.0.0.1:{server.server_port}/predictions/fraud"
        args[args.index("--seconds") + 1] = "3"
        assert traffic.main(args + ["--every", "1"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])["summary"]
    assert summary["requests"] > 20 and summary["failed"] == 0 and summary["adapters"] == ["base"]
    assert summary["accuracy"] < 0.5   # --drift: the unhealed model collapses, as the doc says
    assert "accuracy=" in out and "adapters=base" in out
    progress = real_cluster_test().progress(out)   # the real-cluster test reads these lines
    assert progress and all(p["adapters"] == "base" for p in progress)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from examples.fraud.train import build_served
    return build_served(tmp_path_factory.mktemp("models") / "store", rows=16000, seed=0)
