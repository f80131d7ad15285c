"""The real kubectl against the sandbox API: apply, get, watch, wait, patch, diff, dry runs, deletes."""
from __future__ import annotations

import base64
import json
import subprocess
import time

from sandbox_helpers import FIXTURES, Sandbox, widget_yaml


def test_apply_crd_then_cr_and_get_by_plural_short_name_and_jsonpath(sandbox: Sandbox, widget_crd, namespace):
    crd = sandbox.get("crd", widget_crd)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}

    sandbox.kubectl("apply", "-n", namespace, "-f", str(FIXTURES / "widget.yaml"))
    table = sandbox.kubectl("get", "widgets", "-n", namespace).stdout
    header, row = table.splitlines()
    assert header.split() == ["NAME", "SIZE", "PHASE", "AGE"]  # the CRD's printer columns
    assert row.split()[:2] == ["first", "3"]
    assert sandbox.kubectl("get", "wd", "first", "-n", namespace, "-o", "name").stdout.strip() == \
        "widget.demo.selfheal.io/first"
    out = sandbox.kubectl("get", "widget", "first", "-n", namespace, "-o",
                          "jsonpath={.spec.color} {.metadata.generation} {.metadata.uid}").stdout.split()
    assert out[0] == "red"  # the schema's default was applied
    assert out[1] == "1" and len(out[2]) == 36

    listing = json.loads(sandbox.kubectl("get", "--raw", f"/apis/demo.selfheal.io/v1/namespaces/{namespace}/widgets").stdout)
    assert listing["kind"] == "WidgetList" and listing["apiVersion"] == "demo.selfheal.io/v1"
    assert int(listing["metadata"]["resourceVersion"]) >= int(listing["items"][0]["metadata"]["resourceVersion"])


def test_apply_is_idempotent_and_reapply_changes_only_what_changed(sandbox: Sandbox, widget_crd, namespace):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("w1", 2))
    before = sandbox.get("wd", "w1", "-n", namespace)
    again = sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("w1", 2)).stdout
    assert "unchanged" in again
    assert sandbox.get("wd", "w1", "-n", namespace)["metadata"]["resourceVersion"] == \
        before["metadata"]["resourceVersion"]
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("w1", 4))
    after = sandbox.get("wd", "w1", "-n", namespace)
    assert after["spec"]["size"] == 4 and after["metadata"]["generation"] == 2


def test_invalid_cr_is_rejected_naming_the_fields(sandbox: Sandbox, widget_crd, namespace):
    result = sandbox.kubectl("apply", "-n", namespace, "-f", str(FIXTURES / "widget-invalid.yaml"), check=False)
    assert result.returncode != 0
    assert "spec.size" in result.stderr and "less than or equal to 10" in result.stderr
    assert 'spec.color: Unsupported value: "purple"' in result.stderr
    missing = sandbox.kubectl("apply", "-n", namespace, "-f", "-", check=False, input=(
        "apiVersion: demo.selfheal.io/v1\nkind: Widget\nmetadata: {name: nosize}\nspec: {color: red}\n"))
    assert missing.returncode != 0 and "spec.size: Required value" in missing.stderr
    unknown = sandbox.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                              input=widget_yaml("typo", 2, colour="red"))
    assert unknown.returncode != 0 and 'unknown field "spec.colour"' in unknown.stderr
    assert sandbox.kubectl("get", "wd", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_patch_merge_json_and_status_subresource(sandbox: Sandbox, widget_crd, namespace):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("p1", 1))
    sandbox.kubectl("patch", "wd", "p1", "-n", namespace, "--type", "merge", "-p", '{"spec":{"size":5}}')
    sandbox.kubectl("patch", "wd", "p1", "-n", namespace, "--type", "json",
                    "-p", '[{"op":"replace","path":"/spec/color","value":"blue"}]')
    # status through the main resource is ignored (status subresource), through /status it lands
    sandbox.kubectl("patch", "wd", "p1", "-n", namespace, "--type", "merge", "-p", '{"status":{"phase":"Nope"}}')
    sandbox.kubectl("patch", "wd", "p1", "-n", namespace, "--subresource=status", "--type", "merge",
                    "-p", '{"status":{"phase":"Ready"}}')
    obj = sandbox.get("wd", "p1", "-n", namespace)
    assert (obj["spec"]["size"], obj["spec"]["color"], obj["status"]["phase"]) == (5, "blue", "Ready")
    assert obj["metadata"]["generation"] == 3  # two spec changes; status patches do not count
    bad = sandbox.kubectl("patch", "wd", "p1", "-n", namespace, "--type", "json",
                          "-p", '[{"op":"test","path":"/spec/size","value":99},'
                                '{"op":"replace","path":"/spec/size","value":7}]', check=False)
    assert bad.returncode != 0 and "test failed" in bad.stderr
    assert sandbox.get("wd", "p1", "-n", namespace)["spec"]["size"] == 5


def test_get_watch_streams_changes(sandbox: Sandbox, widget_crd, namespace):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("w", 1))
    watcher = subprocess.Popen([sandbox.kubectl_bin, "get", "wd", "-n", namespace, "-w", "--output-watch-events",
                                "-o", "json"],
                               env=sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        sandbox.kubectl("patch", "wd", "w", "-n", namespace, "--type", "merge", "-p", '{"spec":{"size":9}}')
        sandbox.kubectl("delete", "wd", "w", "-n", namespace)
        time.sleep(1.0)
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
    decoder, events, pos = json.JSONDecoder(), [], 0
    while out[pos:].strip():
        event, end = decoder.raw_decode(out[pos:].lstrip())
        pos += len(out[pos:]) - len(out[pos:].lstrip()) + end
        events.append((event["type"], event["object"]["metadata"]["name"], event["object"]["spec"]["size"]))
    assert events == [("ADDED", "w", 1), ("MODIFIED", "w", 9), ("DELETED", "w", 9)]


def test_wait_for_condition_and_jsonpath(sandbox: Sandbox, widget_crd, namespace):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("wt", 1))
    waiter = subprocess.Popen([sandbox.kubectl_bin, "wait", "-n", namespace, "wd/wt", "--for=condition=Ready",
                               "--timeout=20s"], env=sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    time.sleep(1.0)
    assert waiter.poll() is None, "kubectl wait returned before the condition was set"
    sandbox.kubectl("patch", "wd", "wt", "-n", namespace, "--subresource=status", "--type", "merge",
                    "-p", '{"status":{"phase":"Ready","conditions":[{"type":"Ready","status":"True"}]}}')
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err
    assert "condition met" in out
    sandbox.kubectl("wait", "-n", namespace, "wd/wt", "--for=jsonpath={.status.phase}=Ready", "--timeout=5s")


def test_delete_with_finalizer_waits_for_its_removal(sandbox: Sandbox, widget_crd, namespace):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("fin", 1))
    sandbox.kubectl("patch", "wd", "fin", "-n", namespace, "--type", "merge",
                    "-p", '{"metadata":{"finalizers":["demo.selfheal.io/hold"]}}')
    sandbox.kubectl("delete", "wd", "fin", "-n", namespace, "--wait=false")
    held = sandbox.get("wd", "fin", "-n", namespace)
    assert held["metadata"]["deletionTimestamp"]
    waiter = subprocess.Popen([sandbox.kubectl_bin, "wait", "-n", namespace, "wd/fin", "--for=delete",
                               "--timeout=20s"], env=sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    time.sleep(0.5)
    assert waiter.poll() is None
    sandbox.kubectl("patch", "wd", "fin", "-n", namespace, "--type", "json",
                    "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    _, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err
    gone = sandbox.kubectl("get", "wd", "fin", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_diff_and_server_dry_run_change_nothing(sandbox: Sandbox, widget_crd, namespace):
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("d1", 2))
    before = sandbox.get("wd", "d1", "-n", namespace)
    diff = sandbox.kubectl("diff", "-n", namespace, "-f", "-", input=widget_yaml("d1", 6), check=False)
    assert diff.returncode == 1, diff.stderr  # 1 = differences found
    assert "-  size: 2" in diff.stdout and "+  size: 6" in diff.stdout
    same = sandbox.kubectl("diff", "-n", namespace, "-f", "-", input=widget_yaml("d1", 2), check=False)
    assert same.returncode == 0 and same.stdout == ""
    dry = sandbox.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=widget_yaml("d1", 7))
    assert "server dry run" in dry.stdout
    sandbox.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=widget_yaml("d2", 7))
    assert sandbox.get("wd", "d1", "-n", namespace) == before
    assert sandbox.kubectl("get", "wd", "d2", "-n", namespace, check=False).returncode != 0
    bad = sandbox.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", check=False,
                          input=widget_yaml("d1", 70))
    assert bad.returncode != 0 and "spec.size" in bad.stderr


def test_server_side_apply_and_replace_conflict(sandbox: Sandbox, widget_crd, namespace):
    sandbox.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=widget_yaml("ss", 2))
    sandbox.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=widget_yaml("ss", 3))
    current = sandbox.get("wd", "ss", "-n", namespace)
    assert current["spec"]["size"] == 3
    stale = dict(current, spec={"size": 4, "color": "green"})
    stale["metadata"] = dict(current["metadata"], resourceVersion="1")
    conflict = sandbox.kubectl("replace", "-f", "-", input=json.dumps(stale), check=False)
    assert conflict.returncode != 0 and "the object has been modified" in conflict.stderr
    fresh = dict(current, spec={"size": 4, "color": "green"})
    sandbox.kubectl("replace", "-f", "-", input=json.dumps(fresh))
    assert sandbox.get("wd", "ss", "-n", namespace)["spec"] == {"size": 4, "color": "green"}


def test_builtin_kinds_created_with_protobuf_bodies_and_label_selectors(sandbox: Sandbox, namespace):
    sandbox.kubectl("create", "secret", "generic", "s1", "-n", namespace, "--from-literal=token=abc")
    sandbox.kubectl("create", "configmap", "c1", "-n", namespace, "--from-literal=mode=fast")
    sandbox.kubectl("create", "configmap", "c2", "-n", namespace, "--from-literal=mode=slow")
    sandbox.kubectl("label", "configmap", "c1", "-n", namespace, "tier=gold")
    secret = sandbox.get("secret", "s1", "-n", namespace)
    assert base64.b64decode(secret["data"]["token"]) == b"abc"
    assert sandbox.get("cm", "c2", "-n", namespace)["data"] == {"mode": "slow"}
    gold = sandbox.kubectl("get", "cm", "-n", namespace, "-l", "tier=gold", "-o", "name").stdout.split()
    assert gold == ["configmap/c1"]
    others = sandbox.kubectl("get", "cm", "-n", namespace, "-l", "tier notin (gold)", "-o", "name").stdout.split()
    assert others == ["configmap/c2"]
    dup = sandbox.kubectl("create", "configmap", "c1", "-n", namespace, check=False)
    assert dup.returncode != 0 and 'configmaps "c1" already exists' in dup.stderr


def test_deleting_a_namespace_deletes_its_objects(sandbox: Sandbox, widget_crd):
    sandbox.kubectl("create", "namespace", "doomed")
    sandbox.kubectl("apply", "-n", "doomed", "-f", "-", input=widget_yaml("w", 1))
    sandbox.kubectl("create", "configmap", "c", "-n", "doomed")
    sandbox.kubectl("delete", "namespace", "doomed", "--timeout=10s")
    assert sandbox.kubectl("get", "ns", "doomed", check=False).returncode != 0
    assert sandbox.kubectl("get", "wd,cm", "-A", "--field-selector=metadata.namespace=doomed", "-o",
                           "name").stdout.strip() == ""
    missing = sandbox.kubectl("create", "configmap", "c", "-n", "doomed", check=False)
    assert missing.returncode != 0 and 'namespaces "doomed" not found' in missing.stderr


DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: IMAGE
          env: ENV
        - {name: side, image: busybox}
"""


def test_builtin_apply_uses_strategic_merge_and_scale_subresource(sandbox: Sandbox, namespace):
    first = DEPLOYMENT.replace("IMAGE", "nginx:1").replace("ENV", '[{name: A, value: "1"}, {name: B, value: "2"}]')
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=first)
    second = DEPLOYMENT.replace("IMAGE", "nginx:2").replace("ENV", '[{name: A, value: "1"}]')
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=second)
    deployment = sandbox.get("deploy", "web", "-n", namespace)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("web", "nginx:2"), ("side", "busybox")]
    assert containers[0]["env"] == [{"name": "A", "value": "1"}]  # B removed by the 3-way strategic merge
    assert deployment["metadata"]["generation"] == 2

    sandbox.kubectl("scale", "deployment", "web", "-n", namespace, "--replicas=4")
    scaled = sandbox.get("deploy", "web", "-n", namespace)
    assert scaled["spec"]["replicas"] == 4 and scaled["metadata"]["generation"] == 3
    scale = json.loads(sandbox.kubectl("get", "--raw",
                                       f"/apis/apps/v1/namespaces/{namespace}/deployments/web/scale").stdout)
    assert (scale["kind"], scale["spec"]["replicas"], scale["status"]["selector"]) == ("Scale", 4, "app=web")
