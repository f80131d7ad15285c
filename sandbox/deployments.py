"""The process kubelet, Deployment part: Deployment and ReplicaSet controllers, pods as local process
groups (`sandbox.pods`), Services through a local kube-proxy (`sandbox.proxy`).

It reconciles by polling the API over HTTP (a full list of Deployments, ReplicaSets, Pods, Services
and ConfigMaps every `interval_s`, or after a pause as long as the last reconcile took where that was
longer), which keeps it simple and self-healing after API hiccups:
- a Deployment owns ReplicaSets named `<deployment>-<pod-template-hash>`; a template change makes a
  new one and rolls over like the Deployment controller: at most `replicas + maxSurge` pods, at least
  `replicas - maxUnavailable` Ready ones (defaults here 1 and 0, the operator's), so an old pod goes
  only once a new one is Ready; Deployment/ReplicaSet `status` (observedGeneration, replicas,
  updatedReplicas, readyReplicas, availableReplicas, conditions, revision annotations) is kept so
  `kubectl rollout status` works;
- a ReplicaSet owns Pods `<rs>-<5 chars>` (template labels + `pod-template-hash`); it deletes
  unready and newest ones first;
- every Pod not owned by a Job runs as a `PodProcess` on its own loopback IP; deleting a Pod is
  graceful (not ready, drain, SIGTERM, SIGKILL after `terminationGracePeriodSeconds`), and the Pod
  object goes away only after its processes did;
- a Service gets a `clusterIP` from 127.0.1.0/24 (then 127.0.128.0/18) if it has none and a proxy per TCP port.
Deleting a Deployment garbage-collects its ReplicaSets and Pods in the API; their processes stop.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import random
import string
from pathlib import Path
from typing import Any

import aiohttp

from sandbox.kubelet import ApiClient
from sandbox.pods import POD_NETWORK, POD_OVERFLOW, AddressPool, PodProcess, PodSpecError, _resolve_port, now, secret_key
from sandbox.proxy import ServicePort, proxy_session

log = logging.getLogger("sandbox.deployments")

SERVICE_NETWORK = ipaddress.IPv4Network("127.0.1.0/24")
SERVICE_OVERFLOW = ipaddress.IPv4Network("127.0.128.0/18")   # once SERVICE_NETWORK's 253 are taken
DRAIN_S = 1.0
SHUTDOWN_GRACE_S = 10.0
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's "safe" encoding alphabet


def _meaningful(value: Any) -> Any:
    """A template without the zero values clients add when they round-trip it through Go types
    (`creationTimestamp: null`, `resources: {}`), so `kubectl rollout undo` finds its ReplicaSet."""
    if isinstance(value, dict):
        kept = {k: _meaningful(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and (v not in ({}, []) or k == "emptyDir")}
    if isinstance(value, list):
        return [_meaningful(v) for v in value]
    return value


def template_hash(template: dict[str, Any]) -> str:
    """The `pod-template-hash`: equal for templates that mean the same."""
    digest = hashlib.sha256(json.dumps(_meaningful(template), sort_keys=True).encode()).digest()
    return "".join(HASH_ALPHABET[b % len(HASH_ALPHABET)] for b in digest[:10])


def _owner_uid(obj: dict[str, Any], kind: str) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller", True):
            return ref.get("uid")
    return None


class ByOwner:
    """The objects of one listing by the uid of their controller of `kind` (one dict lookup per owner,
    not a scan of every object: a reconcile of a thousand Deployments was quadratic), kept current as
    the reconcile creates objects (`append`)."""

    def __init__(self, objects: list[dict[str, Any]], kind: str):
        self.objects, self.kind = objects, kind
        self.index: dict[str | None, list[dict[str, Any]]] = collections.defaultdict(list)
        for obj in objects:
            self.index[_owner_uid(obj, kind)].append(obj)

    def owned_by(self, uid: str) -> list[dict[str, Any]]:
        return list(self.index.get(uid, ()))

    def append(self, obj: dict[str, Any]) -> None:
        self.objects.append(obj)
        self.index[_owner_uid(obj, self.kind)].append(obj)


def _owner_ref(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _scaled(value: Any, total: int, round_up: bool, field: str) -> int:
    """An int-or-percent rollout parameter as a pod count."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    raise PodSpecError(f"{field} must be an integer or a percentage, got {value!r}")


def _ns_path(kind_path: str, namespace: str, name: str = "") -> str:
    group, plural = kind_path.rsplit("/", 1)
    return f"{group}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


DEPLOYMENTS, REPLICASETS = "/apis/apps/v1/deployments", "/apis/apps/v1/replicasets"
PODS, SERVICES, CONFIGMAPS = "/api/v1/pods", "/api/v1/services", "/api/v1/configmaps"
SECRETS = "/api/v1/secrets"


class DeploymentKubelet:
    """Runs Deployments, ReplicaSets, Pods and Services locally until stopped."""

    def __init__(self, api_url: str, workdir: Path, interval_s: float = 0.5):
        self.api_url = api_url
        self.pods_dir = Path(workdir) / "pods"
        self.interval_s = interval_s
        self.pod_ips = AddressPool(POD_NETWORK, "127.0.0.2", overflow=POD_OVERFLOW)
        self.service_ips = AddressPool(SERVICE_NETWORK, "127.0.1.2", overflow=SERVICE_OVERFLOW)
        self.running: dict[str, PodProcess] = {}           # pod uid -> its process
        self.stopping: dict[str, asyncio.Task] = {}         # pod uid -> its graceful stop
        self.failed: dict[str, str] = {}                    # pod uid -> why it could not start
        self.reported: dict[str, Any] = {}                  # object uid -> last status written
        self.proxies: dict[tuple[str, str, int], ServicePort] = {}  # (service uid, ip, port) -> listener
        self.inflight: collections.Counter = collections.Counter()  # pod IP -> requests being proxied
        self.services: dict[str, dict[str, Any]] = {}               # service uid -> latest object
        self.warned: dict[Any, str] = {}                            # what was logged, to log it once
        self.dirty = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.upstream: aiohttp.ClientSession | None = None
        self.loop_task: asyncio.Task | None = None

    async def __aenter__(self) -> "DeploymentKubelet":
        self.session = aiohttp.ClientSession(self.api_url, timeout=aiohttp.ClientTimeout(total=30))
        self.upstream = proxy_session()
        self.loop_task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            await asyncio.gather(self.loop_task, return_exceptions=True)
        for proxy in self.proxies.values():
            await proxy.close()
        await asyncio.gather(*(p.stop(0, SHUTDOWN_GRACE_S) for p in self.running.values()), return_exceptions=True)
        await asyncio.gather(*self.stopping.values(), return_exceptions=True)
        for pool in (self.pod_ips, self.service_ips):
            for address in list(pool.claims):
                pool.release(address)
        for session in (self.session, self.upstream):
            if session is not None:
                await session.close()

    def pids(self) -> dict[str, set[int]]:
        """Pod name -> its live processes (for tests and `down` checks)."""
        return {p.pod["metadata"]["name"]: p.pids() for p in self.running.values()}

    async def _loop(self) -> None:
        api = ApiClient(self.session)
        clock = asyncio.get_running_loop().time
        while True:
            started = clock()
            try:
                await self.reconcile(api)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile failed; retrying")
            self.dirty.clear()
            # A reconcile lists every object: with thousands it takes longer than `interval_s`, and
            # back to back it would starve the API it shares a process with. Pause as long as it took.
            took = clock() - started
            if took > self.interval_s:
                await asyncio.sleep(took)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), self.interval_s)

    async def reconcile(self, api: ApiClient) -> None:
        lists = await asyncio.gather(*(api.request("GET", p) for p in (DEPLOYMENTS, REPLICASETS, PODS, SERVICES,
                                                                        CONFIGMAPS, SECRETS)))
        deployments, rs_list, pod_list, services, config_maps, secrets = (listing["items"] for listing in lists)
        replica_sets, pods = ByOwner(rs_list, "Deployment"), ByOwner(pod_list, "ReplicaSet")
        maps_by_ns: dict[str, dict[str, dict]] = collections.defaultdict(dict)
        for cm in config_maps:
            maps_by_ns[cm["metadata"]["namespace"]][cm["metadata"]["name"]] = cm
        for secret in secrets:   # for envFrom/secretKeyRef; a key no object name can be (pods.secret_key)
            maps_by_ns[secret["metadata"]["namespace"]][secret_key(secret["metadata"]["name"])] = secret
        for deployment in deployments:
            try:
                await self._sync_deployment(api, deployment, replica_sets, pods)
            except (RuntimeError, PodSpecError) as exc:
                log.warning("deployment %s: %s", deployment["metadata"]["name"], exc)
        for rs in list(rs_list):
            await self._sync_replica_set(api, rs, pods)
        await self._sync_pods(api, pod_list, maps_by_ns)
        await self._sync_services(api, services)

    # -- Deployments ----------------------------------------------------------------------------
    def _live_pods(self, pods: ByOwner, rs_uid: str) -> list[dict]:
        return [p for p in pods.owned_by(rs_uid) if not self._is_terminating(p)]

    def _is_terminating(self, pod: dict) -> bool:
        uid = pod["metadata"]["uid"]
        return uid in self.stopping or bool(pod["metadata"].get("deletionTimestamp"))

    def _is_ready(self, pod: dict) -> bool:
        process = self.running.get(pod["metadata"]["uid"])
        return bool(process and process.ready and not process.terminating)

    async def _sync_deployment(self, api: ApiClient, deployment: dict, replica_sets: ByOwner,
                               pods: ByOwner) -> None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        namespace, name = meta["namespace"], meta["name"]
        replicas = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        pod_hash = template_hash(template)
        owned = replica_sets.owned_by(meta["uid"])
        new = next((rs for rs in owned if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == pod_hash),
                   None)
        old = [rs for rs in owned if rs is not new]
        revision = lambda rs: int((rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))
        if new is None:
            labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": pod_hash}
            selector = json.loads(json.dumps(spec.get("selector") or {"matchLabels": {}}))
            selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
            new_template = json.loads(json.dumps(template))
            new_template.setdefault("metadata", {})["labels"] = labels
            new = await api.request("POST", _ns_path(REPLICASETS, namespace), {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{name}-{pod_hash}", "namespace": namespace, "labels": labels,
                             "annotations": {"deployment.kubernetes.io/revision":
                                             str(max([revision(rs) for rs in old], default=0) + 1),
                                             "deployment.kubernetes.io/desired-replicas": str(replicas)},
                             "ownerReferences": [_owner_ref(deployment, "apps/v1", "Deployment")]},
                "spec": {"replicas": 0, "selector": selector, "template": new_template}})
            replica_sets.append(new)
        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        if strategy.get("type") == "Recreate":
            surge, unavailable = 0, replicas
        else:
            surge = _scaled(rolling.get("maxSurge", 1), replicas, True, "maxSurge")
            unavailable = _scaled(rolling.get("maxUnavailable", 0), replicas, False, "maxUnavailable")
            if surge == 0 and unavailable == 0:
                unavailable = 1
        want = {rs["metadata"]["uid"]: int((rs.get("spec") or {}).get("replicas", 0)) for rs in old + [new]}
        new_uid = new["metadata"]["uid"]
        live = {uid: self._live_pods(pods, uid) for uid in want}
        ready = {uid: sum(self._is_ready(p) for p in live[uid]) for uid in want}
        old_uids = [rs["metadata"]["uid"] for rs in sorted(old, key=revision)]
        if not any(want[u] or live[u] for u in old_uids):
            want[new_uid] = replicas
        else:
            if strategy.get("type") == "Recreate":
                for uid in old_uids:
                    want[uid] = 0
                want[new_uid] = 0 if any(live[u] for u in old_uids) else replicas
            else:
                total = sum(max(want[u], len(live[u])) for u in want)
                room = max(0, replicas + surge - total)
                want[new_uid] = min(replicas, want[new_uid] + room)
                for uid in old_uids:  # unready old pods cost no availability: drop them first
                    want[uid] = min(want[uid], ready[uid])
                removable = sum(ready.values()) - (replicas - unavailable)
                for uid in old_uids:
                    take = max(0, min(removable, want[uid]))
                    want[uid] -= take
                    removable -= take
        newest = max([revision(rs) for rs in old], default=0)
        if old and revision(new) <= newest:  # an earlier template is back (e.g. `kubectl rollout undo`)
            new = await api.request("PATCH", _ns_path(REPLICASETS, namespace, new["metadata"]["name"]), {
                "metadata": {"annotations": {"deployment.kubernetes.io/revision": str(newest + 1)}}},
                "application/merge-patch+json")
        for rs in old + [new]:
            uid = rs["metadata"]["uid"]
            if int((rs.get("spec") or {}).get("replicas", 0)) != want[uid]:
                await api.request("PATCH", _ns_path(REPLICASETS, namespace, rs["metadata"]["name"]),
                                  {"spec": {"replicas": want[uid]}}, "application/merge-patch+json")
                rs.setdefault("spec", {})["replicas"] = want[uid]
        counts = {"replicas": sum(len(v) for v in live.values()), "updatedReplicas": len(live[new_uid]),
                  "readyReplicas": sum(ready.values()), "availableReplicas": sum(ready.values())}
        complete = (counts["updatedReplicas"] == replicas and counts["replicas"] == replicas
                    and counts["availableReplicas"] == replicas)
        available = counts["availableReplicas"] >= replicas - unavailable
        status = {"observedGeneration": meta.get("generation", 1), **counts,
                  "unavailableReplicas": max(0, replicas - counts["availableReplicas"]),
                  "conditions": [
                      {"type": "Available", "status": "True" if available else "False",
                       "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                       "message": "Deployment has minimum availability." if available
                       else "Deployment does not have minimum availability."},
                      {"type": "Progressing", "status": "True",
                       "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                       "message": f'ReplicaSet "{new["metadata"]["name"]}" ' +
                                  ("has successfully progressed." if complete else "is progressing.")}]}
        await self._report(api, deployment, _ns_path(DEPLOYMENTS, namespace, name), status)
        rev = (new["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision")
        if rev and (meta.get("annotations") or {}).get("deployment.kubernetes.io/revision") != rev:
            await api.request("PATCH", _ns_path(DEPLOYMENTS, namespace, name),
                              {"metadata": {"annotations": {"deployment.kubernetes.io/revision": rev}}},
                              "application/merge-patch+json")

    async def _report(self, api: ApiClient, obj: dict, path: str, status: dict) -> None:
        """Write `status` unless it is what was last written for this object (timestamps aside)."""
        uid = obj["metadata"]["uid"]
        if self.reported.get(uid) == status:
            return
        stamped = json.loads(json.dumps(status))
        for condition in stamped.get("conditions") or []:
            condition.setdefault("lastUpdateTime", now())
            condition.setdefault("lastTransitionTime", now())
        try:
            await api.patch_status(path, stamped)
            self.reported[uid] = status
        except RuntimeError as exc:  # deleted meanwhile
            log.info("status of %s not written: %s", path, exc)

    # -- ReplicaSets ----------------------------------------------------------------------------
    async def _sync_replica_set(self, api: ApiClient, rs: dict, pods: ByOwner) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        namespace = meta["namespace"]
        live = self._live_pods(pods, meta["uid"])
        want = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        for _ in range(want - len(live)):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            pod = await api.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{meta['name']}-{suffix}", "namespace": namespace,
                             "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                             "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                             "ownerReferences": [_owner_ref(rs, "apps/v1", "ReplicaSet")]},
                "spec": json.loads(json.dumps(template.get("spec") or {}))})
            pods.append(pod)
            live.append(pod)
        if len(live) > want:
            newest_first = sorted(live, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
            victims = sorted(newest_first, key=self._is_ready)  # unready first, then the newest
            for pod in victims[:len(live) - want]:
                self._delete_pod(api, pod)
        ready = sum(self._is_ready(p) for p in live)
        await self._report(api, rs, _ns_path(REPLICASETS, namespace, meta["name"]), {
            "observedGeneration": meta.get("generation", 1), "replicas": len(live),
            "fullyLabeledReplicas": len(live), "readyReplicas": ready, "availableReplicas": ready})

    # -- Pods -----------------------------------------------------------------------------------
    def _delete_pod(self, api: ApiClient, pod: dict) -> None:
        """Graceful deletion by a controller: drain and stop the process, then delete the object."""
        uid = pod["metadata"]["uid"]
        if uid in self.stopping:
            return
        path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
        self.stopping[uid] = asyncio.create_task(self._stop_pod(api, uid, pod, path))

    async def _stop_pod(self, api: ApiClient, uid: str, pod: dict, delete_path: str | None) -> None:
        try:
            process = self.running.get(uid)
            if process is not None:
                grace = float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                await process.stop(DRAIN_S, grace)
                self.pod_ips.release(process.ip)
                process.remove_dir()
            if delete_path is not None:
                with contextlib.suppress(RuntimeError):
                    await api.request("DELETE", delete_path)
        except Exception:
            log.exception("stopping pod %s failed", pod["metadata"]["name"])
        finally:
            self.running.pop(uid, None)
            self.reported.pop(uid, None)
            self.stopping.pop(uid, None)
            self.dirty.set()

    async def _sync_pods(self, api: ApiClient, pods: list[dict], config_maps: dict[str, dict[str, dict]]) -> None:
        present = {p["metadata"]["uid"] for p in pods}
        for uid, process in list(self.running.items()):
            if uid not in present and uid not in self.stopping:  # deleted through the API: stop it now
                self.stopping[uid] = asyncio.create_task(self._stop_pod(api, uid, process.pod, None))
        for uid in list(self.failed):
            if uid not in present:
                del self.failed[uid]
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            if _owner_uid(pod, "Job") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            process = self.running.get(uid)
            if meta.get("deletionTimestamp") and uid not in self.stopping:  # held by a finalizer: stop it
                if process is not None:
                    self.stopping[uid] = asyncio.create_task(self._stop_pod(api, uid, pod, None))
                continue
            if uid in self.stopping:  # draining: its not-Ready status must show
                if process is not None:
                    await self._report(api, pod, path, process.status())
                continue
            if process is None and uid not in self.failed:
                process = self._start_pod(pod, config_maps.get(meta["namespace"], {}))
            if process is None:
                container = (pod["spec"].get("containers") or [{}])[0]
                await self._report(api, pod, path, {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False", "reason": "CreateContainerConfigError",
                     "message": self.failed[uid]}], "containerStatuses": [
                    {"name": container.get("name", ""), "image": container.get("image", ""), "imageID": "",
                     "ready": False, "started": False, "restartCount": 0, "lastState": {},
                     "state": {"waiting": {"reason": "CreateContainerConfigError", "message": self.failed[uid]}}}]})
                continue
            process.sync_config_maps(config_maps.get(meta["namespace"], {}))
            await self._report(api, pod, path, process.status())

    def _start_pod(self, pod: dict, config_maps: dict[str, dict]) -> PodProcess | None:
        meta = pod["metadata"]
        try:
            ip = self.pod_ips.take(declared_ports(pod))
        except PodSpecError as exc:
            self.failed[meta["uid"]] = str(exc)
            return None
        try:
            process = self._pod_process(pod, ip, self.pods_dir / meta["namespace"] / meta["name"])
            process.start(config_maps, self.upstream)
        except (PodSpecError, OSError) as exc:
            self.pod_ips.release(ip)
            self.failed[meta["uid"]] = str(exc)
            log.warning("pod %s/%s cannot run: %s", meta["namespace"], meta["name"], exc)
            return None
        self.running[meta["uid"]] = process
        return process

    def _pod_process(self, pod: dict, ip: str, pod_dir: Path) -> PodProcess:
        """What runs a pod (a process group here; `sandbox.fakepods` swaps in cheap fakes)."""
        return PodProcess(pod, ip, pod_dir, self.dirty.set, lambda address: self.inflight[address])

    # -- Services -------------------------------------------------------------------------------
    async def _sync_services(self, api: ApiClient, services: list[dict]) -> None:
        wanted: set[tuple[str, str, int]] = set()
        self.services = {s["metadata"]["uid"]: s for s in services}
        for service in services:
            meta, spec = service["metadata"], service.get("spec") or {}
            if meta.get("deletionTimestamp") or spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
                continue
            if not spec.get("selector"):
                continue
            address = spec.get("clusterIP")
            tcp_ports = [int(p["port"]) for p in spec.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
            if not address:
                try:
                    address = self.service_ips.take(tcp_ports)
                except PodSpecError as exc:
                    self._warn_once(meta["uid"], f"service {meta['name']}: {exc}")
                    continue
                try:
                    await api.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}",
                                      {"spec": {"clusterIP": address, "clusterIPs": [address]}},
                                      "application/merge-patch+json")
                except RuntimeError:
                    self.service_ips.release(address)
                    continue
            elif not self.service_ips.holds(address):
                self._warn_once(meta["uid"], f"service {meta['name']}: clusterIP {address} is outside "
                                             f"{SERVICE_NETWORK} and {SERVICE_OVERFLOW}; not proxied")
                continue
            elif not self.service_ips.claim(address):
                self._warn_once(meta["uid"], f"service {meta['name']}: clusterIP {address} is held by another "
                                             "sandbox on this machine; not proxied")
                continue
            for port in spec.get("ports") or []:
                if port.get("protocol", "TCP") != "TCP":
                    continue
                key = (meta["uid"], address, int(port["port"]))
                wanted.add(key)
                if key not in self.proxies:
                    proxy = ServicePort(f"{meta['namespace']}/{meta['name']}:{port['port']}", address,
                                        int(port["port"]), self._endpoints_for(service, port), self.inflight,
                                        self.upstream)
                    try:
                        await proxy.start()
                    except OSError as exc:
                        await proxy.close()
                        self._warn_once(key, f"service {meta['name']}: cannot listen on {address}:{port['port']}: {exc}")
                        continue
                    self.proxies[key] = proxy
        for key in set(self.proxies) - wanted:
            await self.proxies.pop(key).close()
            if not any(k[1] == key[1] for k in self.proxies):
                self.service_ips.release(key[1])

    def _warn_once(self, key: Any, message: str) -> None:
        if self.warned.get(key) != message:
            self.warned[key] = message
            log.warning("%s", message)

    def _endpoints_for(self, service: dict, port: dict):
        """The Ready endpoints of one Service port, from the Service's latest spec (selector and
        targetPort may change) and the pods' in-memory readiness (no lag behind the API)."""
        namespace, uid, number = service["metadata"]["namespace"], service["metadata"]["uid"], port["port"]

        def endpoints() -> list[tuple[str, int]]:
            current = (self.services.get(uid) or service).get("spec") or {}
            selector = current.get("selector") or {}
            declared = next((p for p in current.get("ports") or [] if p.get("port") == number), port)
            target = declared.get("targetPort", number)
            found = []
            for process in self.running.values():
                meta = process.pod["metadata"]
                labels = meta.get("labels") or {}
                if meta["namespace"] != namespace or not process.ready or process.terminating:
                    continue
                if all(labels.get(k) == v for k, v in selector.items()):
                    with contextlib.suppress(PodSpecError):
                        found.append((process.ip, _resolve_port(target, process.container)))
            return sorted(found)
        return endpoints


def declared_ports(pod: dict) -> list[int]:
    """The TCP container ports of a pod's first container (what its process will bind on its IP)."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return [int(p["containerPort"]) for p in containers[0].get("ports") or []
            if p.get("protocol", "TCP") == "TCP" and "containerPort" in p]


def deployment_kubelet(api_url: str, workdir: Path) -> DeploymentKubelet:
    """The node agent for `sandbox.server`: `async with deployment_kubelet(url, workdir): ...`."""
    return DeploymentKubelet(api_url, workdir)
