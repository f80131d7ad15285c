"""The scale-test helpers of the sandbox: the API's per-client request counter, and fake pods that
are Ready, listen on their own pod IP and stop listening when deleted, without any process."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import kmock

from sandbox.emulator import SandboxAPI
from sandbox.fakepods import FakeDeploymentKubelet, Healthy

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def deployment(name: str) -> dict:
    container = {"name": "c", "command": ["never-run"], "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 1}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}}


async def until(check, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.2)
    raise AssertionError("timed out")


def test_request_counter_by_client_verb_and_resource():
    async def main():
        api = SandboxAPI()
        async with api, kmock.Server(api) as server, aiohttp.ClientSession(str(server.url)) as http:
            for _ in range(3):
                async with http.get("/api/v1/namespaces/default/pods", headers={"User-Agent": "tester/1.0"}):
                    pass
            async with http.patch("/api/v1/namespaces/default", data=json.dumps({"metadata": {"labels": {"a": "b"}}}),
                                  headers={"User-Agent": "tester/1.0",
                                           "Content-Type": "application/merge-patch+json"}):
                pass
            async with http.get("/debug/requests") as response:
                counts = {(c["client"], c["verb"], c["resource"]): c["count"] for c in (await response.json())["counts"]}
        assert counts[("tester", "list", "pods")] == 3
        assert counts[("tester", "patch", "namespaces")] == 1
        assert not any(resource == "/debug/requests" for _, _, resource in counts)
    asyncio.run(main())


def test_fake_pods_get_ready_answer_on_their_ip_and_stop(tmp_path):
    async def main():
        api = SandboxAPI()
        async with api, kmock.Server(api) as server, aiohttp.ClientSession(str(server.url)) as http:
            url = f"http://127.0.0.1:{server.port}"
            async with FakeDeploymentKubelet(url, tmp_path, Healthy()) as kubelet:
                async with http.post(DEPLOYMENTS, json=deployment("web")) as response:
                    assert response.status == 201

                async def ready_pod():
                    async with http.get("/api/v1/namespaces/default/pods") as response:
                        pods = (await response.json())["items"]
                    return next((p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                                        for c in (p.get("status") or {}).get("conditions") or [])),
                                None)
                pod = await until(ready_pod)
                ip = pod["status"]["podIP"]
                assert ip.startswith("127.0.0.") and ip != "127.0.0.1"
                assert pod["status"]["containerStatuses"][0]["containerID"] == f"fake://{ip}"
                assert all(not pids for pids in kubelet.pids().values()), "a fake pod started a process"
                async with aiohttp.ClientSession() as client, client.get(f"http://{ip}:8080/anything") as response:
                    assert response.status == 200 and (await response.json()) == {"status": "Healthy"}
                async with http.get(f"{DEPLOYMENTS}/web") as response:
                    assert (await response.json())["status"]["readyReplicas"] == 1

                async with http.delete(f"{DEPLOYMENTS}/web"):
                    pass

                async def closed():
                    try:
                        async with aiohttp.ClientSession() as client, client.get(f"http://{ip}:8080/ping"):
                            return False
                    except aiohttp.ClientConnectionError:
                        return True
                await until(closed)
    asyncio.run(main())
