"""The sandbox API in-process (kmock.Server + aiohttp): the apiserver behaviours clients depend on,
checked at the HTTP level where the CLI tests cannot see them (resumed watches, watch-list, 410s,
error reasons, generations, dry runs, protobuf, fault injection through kmock reactions)."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import aiohttp
import kmock
import pytest
import yaml

from sandbox import emulator
from sandbox.emulator import SandboxAPI
from sandbox_helpers import FIXTURES

WIDGETS = "/apis/demo.selfheal.io/v1/namespaces/default/widgets"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def run(test: Callable[[SandboxAPI, aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        api = SandboxAPI()
        async with api, kmock.Server(api) as server, aiohttp.ClientSession(str(server.url)) as http:
            await test(api, http)
    asyncio.run(main())


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None,
               content_type: str = "application/json", expect: int | None = None) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else (json.dumps(body) if body is not None else None)
    async with http.request(method, path, data=data, headers={"Content-Type": content_type}) as response:
        payload = await response.json(content_type=None)
        if expect is not None:
            assert response.status == expect, payload
        return payload


async def with_widget_crd(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", CRDS, yaml.safe_load((FIXTURES / "widget-crd.yaml").read_text()), expect=201)


def widget(name: str, size: int = 1) -> dict[str, Any]:
    return {"apiVersion": "demo.selfheal.io/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": size}}


async def read_events(response: aiohttp.ClientResponse, count: int, timeout: float = 5) -> list[dict]:
    events = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = await response.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


def test_namespaces_list_and_core_discovery():
    async def test(api, http):
        namespaces = await call(http, "GET", "/api/v1/namespaces", expect=200)
        assert namespaces["kind"] == "NamespaceList" and namespaces["apiVersion"] == "v1"
        assert {n["metadata"]["name"] for n in namespaces["items"]} >= {"default", "kube-system"}
        core = await call(http, "GET", "/api/v1", expect=200)
        assert core["groupVersion"] == "v1"
        for entry in core["resources"]:
            if "/" in entry["name"]:
                assert "shortNames" not in entry, entry  # subresources never repeat the parent's short names
        pods = next(e for e in core["resources"] if e["name"] == "pods")
        assert pods["shortNames"] == ["po"] and pods["namespaced"] is True
    run(test)


def test_crd_registers_in_discovery_and_unregisters_with_its_objects():
    async def test(api, http):
        await call(http, "GET", WIDGETS, expect=404)
        await with_widget_crd(http)
        crd = await call(http, "GET", f"{CRDS}/widgets.demo.selfheal.io", expect=200)
        assert {c["type"] for c in crd["status"]["conditions"]} == {"NamesAccepted", "Established"}
        assert crd["status"]["acceptedNames"]["listKind"] == "WidgetList"
        groups = await call(http, "GET", "/apis")
        assert "demo.selfheal.io" in [g["name"] for g in groups["groups"]]
        resources = await call(http, "GET", "/apis/demo.selfheal.io/v1")
        assert [(r["name"], r.get("shortNames")) for r in resources["resources"]] == [
            ("widgets", ["wd"]), ("widgets/status", None)]
        openapi_index = await call(http, "GET", "/openapi/v3")
        assert "apis/demo.selfheal.io/v1" in openapi_index["paths"]
        await call(http, "POST", WIDGETS, widget("w1"), expect=201)
        await call(http, "DELETE", f"{CRDS}/widgets.demo.selfheal.io", expect=200)
        await call(http, "GET", "/apis/demo.selfheal.io/v1", expect=404)
        assert not [key for key in api.objects if key[0].plural == "widgets" and not api.objects[key].deleted]
    run(test)


def test_invalid_crd_is_refused_with_causes():
    async def test(api, http):
        crd = yaml.safe_load((FIXTURES / "widget-crd.yaml").read_text())
        crd["metadata"]["name"] = "wrong.name"
        del crd["spec"]["names"]["kind"]
        status = await call(http, "POST", CRDS, crd, expect=422)
        assert status["reason"] == "Invalid"
        assert {c["field"] for c in status["details"]["causes"]} == {"spec.names.kind", "metadata.name"}
    run(test)


def test_metadata_generation_and_no_op_writes():
    async def test(api, http):
        await with_widget_crd(http)
        created = await call(http, "POST", WIDGETS, widget("g"), expect=201)
        meta = created["metadata"]
        assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
        labelled = await call(http, "PATCH", f"{WIDGETS}/g", {"metadata": {"labels": {"a": "b"}}},
                              "application/merge-patch+json", expect=200)
        assert labelled["metadata"]["generation"] == 1
        assert int(labelled["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
        resized = await call(http, "PATCH", f"{WIDGETS}/g", {"spec": {"size": 2}}, "application/merge-patch+json")
        assert resized["metadata"]["generation"] == 2
        same = await call(http, "PATCH", f"{WIDGETS}/g", {"spec": {"size": 2}}, "application/merge-patch+json")
        assert same["metadata"]["resourceVersion"] == resized["metadata"]["resourceVersion"]
    run(test)


def test_error_reasons_in_status_bodies():
    async def test(api, http):
        await with_widget_crd(http)
        missing = await call(http, "GET", f"{WIDGETS}/nope", expect=404)
        assert (missing["kind"], missing["reason"], missing["details"]["name"]) == ("Status", "NotFound", "nope")
        await call(http, "POST", WIDGETS, widget("x"), expect=201)
        dup = await call(http, "POST", WIDGETS, widget("x"), expect=409)
        assert dup["reason"] == "AlreadyExists"
        current = await call(http, "GET", f"{WIDGETS}/x")
        stale = dict(current, spec={"size": 5})
        stale["metadata"] = dict(current["metadata"], resourceVersion="1")
        conflict = await call(http, "PUT", f"{WIDGETS}/x", stale, expect=409)
        assert conflict["reason"] == "Conflict" and "has been modified" in conflict["message"]
        invalid = await call(http, "PUT", f"{WIDGETS}/x", dict(current, spec={"size": "big"}), expect=422)
        assert invalid["reason"] == "Invalid"
        assert invalid["details"]["causes"][0]["field"] == "spec.size"
        assert "must be of type integer" in invalid["details"]["causes"][0]["message"]
        await call(http, "POST", "/api/v1/namespaces/ghost/configmaps",
                   {"metadata": {"name": "c"}}, expect=404)
    run(test)


def test_json_patch_with_failed_test_op_is_422_and_changes_nothing():
    async def test(api, http):
        await with_widget_crd(http)
        created = await call(http, "POST", WIDGETS, widget("f"), expect=201)
        rv = created["metadata"]["resourceVersion"]
        kopf_style = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                      {"op": "add", "path": "/metadata/finalizers", "value": ["demo/x"]}]
        added = await call(http, "PATCH", f"{WIDGETS}/f", kopf_style, "application/json-patch+json", expect=200)
        assert added["metadata"]["finalizers"] == ["demo/x"]
        again = await call(http, "PATCH", f"{WIDGETS}/f", kopf_style, "application/json-patch+json", expect=422)
        assert again["reason"] == "Invalid" and "test failed" in again["message"]
        assert (await call(http, "GET", f"{WIDGETS}/f"))["metadata"]["resourceVersion"] == \
            added["metadata"]["resourceVersion"]
    run(test)


def test_dry_run_persists_nothing():
    async def test(api, http):
        await with_widget_crd(http)
        dry = await call(http, "POST", f"{WIDGETS}?dryRun=All", widget("d"), expect=201)
        assert dry["metadata"]["name"] == "d"
        await call(http, "GET", f"{WIDGETS}/d", expect=404)
        await call(http, "POST", WIDGETS, widget("d"), expect=201)
        await call(http, "PATCH", f"{WIDGETS}/d?dryRun=All", {"spec": {"size": 9}}, "application/merge-patch+json")
        await call(http, "DELETE", f"{WIDGETS}/d?dryRun=All", expect=200)
        assert (await call(http, "GET", f"{WIDGETS}/d"))["spec"]["size"] == 1
    run(test)


def test_watch_resumes_from_the_list_resource_version():
    async def test(api, http):
        await with_widget_crd(http)
        await call(http, "POST", WIDGETS, widget("old"), expect=201)
        listing = await call(http, "GET", WIDGETS)
        # changes between the list and the watch must not be lost
        await call(http, "PATCH", f"{WIDGETS}/old", {"spec": {"size": 2}}, "application/merge-patch+json")
        await call(http, "POST", WIDGETS, widget("new"), expect=201)
        since = listing["metadata"]["resourceVersion"]
        async with http.get(f"{WIDGETS}?watch=true&resourceVersion={since}") as response:
            assert response.headers["Content-Type"].startswith("application/json")
            events = await read_events(response, 2)
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
                ("MODIFIED", "old"), ("ADDED", "new")]
            await call(http, "DELETE", f"{WIDGETS}/new")
            deleted = await read_events(response, 1)
            assert (deleted[0]["type"], deleted[0]["object"]["metadata"]["name"]) == ("DELETED", "new")
    run(test)


def test_watch_list_sends_initial_events_then_the_bookmark():
    async def test(api, http):
        await with_widget_crd(http)
        await call(http, "POST", WIDGETS, widget("a"), expect=201)
        await call(http, "POST", WIDGETS, widget("b"), expect=201)
        query = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        async with http.get(f"{WIDGETS}?{query}") as response:
            events = await read_events(response, 3)
        assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
        bookmark = events[2]["object"]["metadata"]
        assert bookmark["annotations"] == {"k8s.io/initial-events-end": "true"}
        assert int(bookmark["resourceVersion"]) >= max(int(e["object"]["metadata"]["resourceVersion"])
                                                       for e in events[:2])
    run(test)


def test_watch_timeout_and_label_selector():
    async def test(api, http):
        await with_widget_crd(http)
        async with http.get(f"{WIDGETS}?watch=true&timeoutSeconds=1&labelSelector=team%3Dblue") as response:
            labelled = widget("blue")
            labelled["metadata"]["labels"] = {"team": "blue"}
            await call(http, "POST", WIDGETS, widget("plain"), expect=201)
            await call(http, "POST", WIDGETS, labelled, expect=201)
            events = await read_events(response, 5, timeout=5)  # the server ends the stream after 1s
        assert [e["object"]["metadata"]["name"] for e in events] == ["blue"]
    run(test)


def test_watch_from_a_compacted_resource_version_is_an_expired_error_event(monkeypatch):
    """As from the apiserver's watch cache: HTTP 200 and one ERROR event with code 410, the signal
    for clients to list afresh (Kopf treats an HTTP-level 410 on a watch as fatal)."""
    monkeypatch.setattr(emulator, "EVENTS_KEPT_PER_RESOURCE", 3)

    async def test(api, http):
        await with_widget_crd(http)
        for number in range(6):
            await call(http, "POST", WIDGETS, widget(f"w{number}"), expect=201)
        async with http.get(f"{WIDGETS}?watch=true&resourceVersion=2") as response:
            assert response.status == 200
            events = [json.loads(line) for line in (await response.read()).splitlines() if line.strip()]
        assert [e["type"] for e in events] == ["ERROR"]
        assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
    run(test)


def test_protobuf_secret_body_is_decoded():
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    meta = field(1, b"pb-secret") + field(11, field(1, b"owner") + field(2, b"helm"))
    secret = field(1, meta) + field(2, field(1, b"key") + field(2, b"\x00\x01bin")) + field(3, b"Opaque")
    envelope = b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"Secret")) + field(2, secret)

    async def test(api, http):
        created = await call(http, "POST", "/api/v1/namespaces/default/secrets", envelope,
                             "application/vnd.kubernetes.protobuf", expect=201)
        assert created["metadata"]["labels"] == {"owner": "helm"}
        assert created["data"] == {"key": "AAFiaW4="} and created["type"] == "Opaque"
        pod = b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"Pod")) + field(2, b"")
        refused = await call(http, "POST", "/api/v1/namespaces/default/pods", pod,
                             "application/vnd.kubernetes.protobuf", expect=415)
        assert "'Pod' cannot be decoded from protobuf" in refused["message"]
    run(test)


def test_kmock_reactions_still_override_the_emulated_api():
    async def test(api, http):
        api["get /api/v1/namespaces/default"] << 503 << {"kind": "Status", "code": 503}
        async with http.get("/api/v1/namespaces/default") as response:
            assert response.status == 503
        async with http.get("/api/v1/namespaces/kube-system") as response:
            assert response.status == 200
    run(test)


@pytest.mark.parametrize("path", ["/api/v1/namespaces/default/pods/x/y/z", "/nonsense"])
def test_unknown_paths_are_404_status(path):
    async def test(api, http):
        status = await call(http, "GET", path, expect=404)
        assert status["kind"] == "Status" and status["reason"] == "NotFound"
    run(test)
