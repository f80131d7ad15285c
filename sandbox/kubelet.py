"""The process kubelet, Job part: runs each batch/v1 Job's pod as a local subprocess.

It talks to the sandbox API over HTTP like a real node would: it watches Jobs, creates a Pod per
attempt (owned by the Job, labelled `job-name`), runs the first container's `command + args` as a
subprocess, then writes the Pod's and the Job's status (`Complete`/`Failed`, `backoffLimit`,
`activeDeadlineSeconds`) and the container's termination message.

A process is not a container, so three conventions stand in for the image's filesystem:
- every `volumeMounts[].mountPath` and the `terminationMessagePath` are mapped to directories under
  `<workdir>/pods/<namespace>/<pod>/`, and occurrences of those paths in `command`, `args` and `env`
  values are rewritten to the local ones; ConfigMap volumes are projected there as files (as a
  kubelet does, the pod waits in Pending for a ConfigMap volume that does not exist yet, up to the
  Job's `activeDeadlineSeconds`: an owner may create it just after the Job);
- the process also gets `TERMINATION_MESSAGE_PATH` (the local termination-log file);
- `python`/`python3` as the command means the sandbox's own interpreter.
Volumes, env (`envFrom`, `value` with `$(VAR)` expansion, `fieldRef`, `configMapKeyRef`), `$(VAR)` in
command/args and the emptyDir/configMap-only check are prepared by the same code as a Deployment
pod's (`pods.prepare_container`). The process inherits the sandbox's environment plus the container's,
and its output goes to `<pod dir>/<container>.log`.

It is also the TTL-after-finished controller: a finished Job (`Complete` or `Failed`) with
`spec.ttlSecondsAfterFinished` is deleted that many seconds after its finishing condition's
`lastTransitionTime` (its pods go with it, by garbage collection). The field may be set or changed
after the Job finished, as on a cluster.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
import string
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp

from sandbox.pods import PodSpecError, prepare_container, secret_key

log = logging.getLogger("sandbox.kubelet")

TERMINATION_MESSAGE_LIMIT = 4096
RETRY_DELAY_S = 0.5
JOB_POD_IP = "127.0.0.1"   # a Job's process runs on the host network: its `status.podIP` for `fieldRef`


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiClient:
    """The few REST calls the kubelet needs, as plain JSON over aiohttp."""

    def __init__(self, session: aiohttp.ClientSession):
        self.session = session

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, path, data=data, headers={"Content-Type": content_type}) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {payload.get('message')}")
            return payload

    async def patch_status(self, path: str, status: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", f"{path}/status", {"status": status}, "application/merge-patch+json")

    async def watch(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """List, then watch from the list's resourceVersion; re-lists when the stream ends."""
        while True:
            listing = await self.request("GET", path)
            for item in listing["items"]:
                yield {"type": "ADDED", "object": item}
            since = listing["metadata"]["resourceVersion"]
            async with self.session.get(f"{path}?watch=true&resourceVersion={since}&timeoutSeconds=300") as resp:
                async for line in resp.content:
                    if line.strip():
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break
                        yield event


def _job_path(job: dict[str, Any]) -> str:
    meta = job["metadata"]
    return f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}"


class JobKubelet:
    """Runs Jobs as subprocesses until stopped; one asyncio task per running Job."""

    def __init__(self, api_url: str, workdir: Path):
        self.api_url = api_url
        self.pods_dir = Path(workdir) / "pods"
        self.tasks: dict[str, asyncio.Task] = {}  # Job uid -> its runner
        self.session: aiohttp.ClientSession | None = None
        self.watcher: asyncio.Task | None = None
        self.expiries: dict[str, tuple[float, asyncio.Task]] = {}  # Job uid -> (its TTL, its deleter)

    async def __aenter__(self) -> "JobKubelet":
        self.session = aiohttp.ClientSession(self.api_url, timeout=aiohttp.ClientTimeout(total=None))
        self.watcher = asyncio.create_task(self._watch_jobs())
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in [self.watcher, *self.tasks.values(), *(t for _, t in self.expiries.values())]
                 if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _watch_jobs(self) -> None:
        api = ApiClient(self.session)
        while True:
            try:
                async for event in api.watch("/apis/batch/v1/jobs"):
                    self._on_job_event(event["type"], event["object"])
            except asyncio.CancelledError:
                raise
            except Exception:  # the API restarted or hiccuped: start over from a fresh list
                log.exception("job watch failed; re-listing")
                await asyncio.sleep(1)

    def _on_job_event(self, kind: str, job: dict[str, Any]) -> None:
        uid = job["metadata"]["uid"]
        if kind == "DELETED":
            task = self.tasks.pop(uid, None)
            if task:
                task.cancel()
            _, expiry = self.expiries.pop(uid, (None, None))
            if expiry:
                expiry.cancel()
            return
        conditions = {c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
        self._schedule_expiry(job)
        if uid in self.tasks or conditions & {"Complete", "Failed"} or (job.get("status") or {}).get("startTime"):
            return  # running, finished, or started by an earlier kubelet (not resumable)
        if job["metadata"].get("deletionTimestamp") or (job.get("spec") or {}).get("suspend"):
            return
        self.tasks[uid] = asyncio.create_task(self._run_job(job))

    def _schedule_expiry(self, job: dict[str, Any]) -> None:
        """The TTL-after-finished controller: (re)schedule the deletion of a finished Job."""
        uid, ttl = job["metadata"]["uid"], (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished = [c for c in (job.get("status") or {}).get("conditions") or []
                    if c.get("status") == "True" and c.get("type") in ("Complete", "Failed")]
        if ttl is None or not finished or job["metadata"].get("deletionTimestamp"):
            return
        if uid in self.expiries:
            if self.expiries[uid][0] == ttl:
                return
            self.expiries.pop(uid)[1].cancel()
        at = datetime.datetime.strptime(finished[0].get("lastTransitionTime") or _now(), "%Y-%m-%dT%H:%M:%SZ")
        at = at.replace(tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=ttl)
        delay = max(0.0, (at - datetime.datetime.now(tz=datetime.timezone.utc)).total_seconds())
        self.expiries[uid] = (ttl, asyncio.create_task(self._expire(job, delay)))

    async def _expire(self, job: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await ApiClient(self.session).request(
                "DELETE", _job_path(job), {"kind": "DeleteOptions", "apiVersion": "v1",
                                           "propagationPolicy": "Background",
                                           "preconditions": {"uid": job["metadata"]["uid"]}})
            log.info("job %s/%s deleted %ss after it finished (ttlSecondsAfterFinished)",
                     job["metadata"]["namespace"], job["metadata"]["name"], job["spec"]["ttlSecondsAfterFinished"])
        except Exception as exc:  # already gone, or replaced by a Job of the same name
            log.info("job %s/%s not deleted after its TTL: %s", job["metadata"]["namespace"],
                     job["metadata"]["name"], exc)

    async def _run_job(self, job: dict[str, Any]) -> None:
        api = ApiClient(self.session)
        spec = job.get("spec") or {}
        backoff_limit = spec.get("backoffLimit", 6)
        deadline_s = spec.get("activeDeadlineSeconds")
        loop = asyncio.get_running_loop()
        started = loop.time()
        failed = 0
        await api.patch_status(_job_path(job), {"startTime": _now(), "active": 1})
        try:
            while True:
                remaining = None if deadline_s is None else deadline_s - (loop.time() - started)
                outcome = await self._run_pod(api, job, remaining)
                if outcome == "Succeeded":
                    await self._finish(api, job, "Complete", "Completed", "the Job's pod succeeded",
                                       succeeded=1, failed=failed)
                    return
                failed += 1
                if outcome == "DeadlineExceeded":
                    await self._finish(api, job, "Failed", "DeadlineExceeded",
                                       "Job was active longer than specified deadline", failed=failed)
                    return
                if failed > backoff_limit:
                    await self._finish(api, job, "Failed", "BackoffLimitExceeded",
                                       "Job has reached the specified backoff limit", failed=failed)
                    return
                await api.patch_status(_job_path(job), {"failed": failed, "active": 1})
                await asyncio.sleep(RETRY_DELAY_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. the Job was deleted meanwhile
            log.warning("job %s/%s: %s", job["metadata"]["namespace"], job["metadata"]["name"], exc)
        finally:
            self.tasks.pop(job["metadata"]["uid"], None)

    async def _finish(self, api: ApiClient, job: dict[str, Any], condition: str, reason: str, message: str,
                      succeeded: int = 0, failed: int = 0) -> None:
        now = _now()
        status: dict[str, Any] = {"active": 0, "failed": failed, "succeeded": succeeded, "conditions": [
            {"type": condition, "status": "True", "reason": reason, "message": message,
             "lastProbeTime": now, "lastTransitionTime": now}]}
        if condition == "Complete":
            status["completionTime"] = now
        await api.patch_status(_job_path(job), status)

    async def _run_pod(self, api: ApiClient, job: dict[str, Any], remaining_s: float | None) -> str:
        """Create the attempt's Pod, run it, record its end; returns Succeeded, Failed or DeadlineExceeded."""
        meta = job["metadata"]
        namespace = meta["namespace"]
        template = (job.get("spec") or {}).get("template") or {}
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": meta["uid"], "batch.kubernetes.io/controller-uid": meta["uid"]})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{meta['name']}-{suffix}", "namespace": namespace, "labels": labels,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                 "uid": meta["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": template.get("spec") or {}}
        pod = await api.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        pod_path = f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}"
        containers = pod["spec"].get("containers") or []
        if not containers or not containers[0].get("command"):
            message = "the sandbox kubelet runs `command` (+ `args`) of the first container; none was given"
            await self._pod_finished(api, pod_path, containers, 127, message, _now(), "Failed")
            return "Failed"
        pod_dir = self.pods_dir / namespace / pod["metadata"]["name"]
        container = containers[0]
        loop = asyncio.get_running_loop()
        deadline = None if remaining_s is None else loop.time() + remaining_s
        if not await self._wait_for_config_maps(api, pod, deadline):
            await self._pod_finished(api, pod_path, containers, None, "", _now(), "Failed")
            return "DeadlineExceeded"
        # Init containers first, in order, each to success (restartPolicy Never: one failure fails the pod).
        init_statuses: list[dict[str, Any]] = []
        for init in pod["spec"].get("initContainers") or []:
            if not init.get("command"):
                message = f"init container {init.get('name')!r}: the sandbox kubelet runs `command` (+ `args`)"
                await self._pod_finished(api, pod_path, containers, 127, message, _now(), "Failed", init_statuses)
                return "Failed"
            try:
                argv, env, log_path, message_path = await self._prepare(api, pod, init, pod_dir)
            except (RuntimeError, OSError) as exc:
                await self._pod_finished(api, pod_path, containers, 128, f"could not prepare init container "
                                         f"{init['name']!r}: {exc}", _now(), "Failed", init_statuses)
                return "Failed"
            started = _now()
            await api.patch_status(pod_path, {"phase": "Pending", "startTime": started, "initContainerStatuses": [
                *init_statuses, {"name": init["name"], "ready": False, "restartCount": 0,
                                 "image": init.get("image", ""), "state": {"running": {"startedAt": started}}}]})
            exit_code, timed_out = await self._run_process(argv, env, log_path, pod_dir, deadline)
            message = self._termination_message(init, message_path, log_path, exit_code)
            terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                          "startedAt": started, "finishedAt": _now(), **({"message": message} if message else {})}
            init_statuses.append({"name": init["name"], "ready": exit_code == 0, "restartCount": 0,
                                  "image": init.get("image", ""), "state": {"terminated": terminated}})
            if exit_code != 0 or timed_out:
                await self._pod_finished(api, pod_path, containers, None, "", started, "Failed", init_statuses)
                return "DeadlineExceeded" if timed_out else "Failed"
        try:
            argv, env, log_path, message_path = await self._prepare(api, pod, container, pod_dir)
        except (RuntimeError, OSError) as exc:
            await self._pod_finished(api, pod_path, containers, 128, f"could not prepare the pod: {exc}", _now(),
                                     "Failed", init_statuses)
            return "Failed"
        started = _now()
        await api.patch_status(pod_path, {"phase": "Running", "startTime": started, "containerStatuses": [
            {"name": container["name"], "ready": True, "restartCount": 0, "image": container.get("image", ""),
             "state": {"running": {"startedAt": started}}}]})
        exit_code, timed_out = await self._run_process(argv, env, log_path, pod_dir, deadline)
        message = self._termination_message(container, message_path, log_path, exit_code)
        phase = "Succeeded" if exit_code == 0 and not timed_out else "Failed"
        await self._pod_finished(api, pod_path, containers, exit_code, message, started, phase, init_statuses)
        return "DeadlineExceeded" if timed_out else phase

    async def _wait_for_config_maps(self, api: ApiClient, pod: dict[str, Any], deadline: float | None) -> bool:
        """Wait until every non-optional ConfigMap volume of `pod` exists, as a kubelet retries the
        mount (the pod stays Pending); False once the deadline passed first."""
        namespace = pod["metadata"]["namespace"]
        names = sorted({v["configMap"]["name"] for v in pod["spec"].get("volumes") or []
                        if "configMap" in v and not v["configMap"].get("optional")})
        loop = asyncio.get_running_loop()
        while names:
            try:
                await api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{names[0]}")
                names.pop(0)
                continue
            except RuntimeError:
                pass
            if deadline is not None and loop.time() >= deadline:
                log.warning("pod %s/%s: configmap %r never appeared", namespace, pod["metadata"]["name"], names[0])
                return False
            await asyncio.sleep(RETRY_DELAY_S)
        return True

    async def _run_process(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path,
                           deadline: float | None) -> tuple[int, bool]:
        """Run one container's process to its end or the Job's deadline: (exit code, timed out)."""
        remaining = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        with open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=cwd, stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
            try:
                return await asyncio.wait_for(process.wait(), remaining), False
            except asyncio.TimeoutError:
                return await self._kill(process), True
            except asyncio.CancelledError:  # the Job was deleted or the sandbox stops
                await self._kill(process)
                raise

    async def _kill(self, process: asyncio.subprocess.Process) -> int:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()

    async def _prepare(self, api: ApiClient, pod: dict[str, Any], container: dict[str, Any],
                       pod_dir: Path) -> tuple[list[str], dict[str, str], Path, Path]:
        """argv, env, log path and termination-message file of one container of the attempt's pod,
        prepared as for a Deployment pod (`pods.prepare_container`)."""
        namespace = pod["metadata"]["namespace"]
        is_main = container is (pod["spec"].get("containers") or [None])[0]
        message_path = pod_dir / ("termination-log" if is_main else f"termination-log-{container['name']}")
        pod_dir.mkdir(parents=True, exist_ok=True)
        message_path.write_text("")
        try:
            argv, env, _ = prepare_container(pod, container, pod_dir, JOB_POD_IP,
                                             await pod_config_maps(api, pod, container), message_path)
        except PodSpecError as exc:
            raise RuntimeError(str(exc)) from exc
        env["POD_NAME"] = pod["metadata"]["name"]
        env["POD_NAMESPACE"] = namespace
        return argv, env, pod_dir / f"{container['name']}.log", message_path

    def _termination_message(self, container: dict[str, Any], message_path: Path, log_path: Path,
                             exit_code: int) -> str:
        message = message_path.read_text(errors="replace") if message_path.exists() else ""
        if not message and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = log_path.read_text(errors="replace").splitlines()[-80:] if log_path.exists() else []
            message = "\n".join(lines)
        return message[-TERMINATION_MESSAGE_LIMIT:]

    async def _pod_finished(self, api: ApiClient, pod_path: str, containers: list[dict[str, Any]],
                            exit_code: int | None, message: str, started: str, phase: str,
                            init_statuses: list[dict[str, Any]] = ()) -> None:
        """`exit_code` None: the main container never ran (an init container failed)."""
        name = containers[0]["name"] if containers else "main"
        if exit_code is None:
            state = {"waiting": {"reason": "PodInitializing"}}
        else:
            state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                    "startedAt": started, "finishedAt": _now(), **({"message": message} if message else {})}}
        status = {"phase": phase, "containerStatuses": [
            {"name": name, "ready": False, "restartCount": 0,
             "image": containers[0].get("image", "") if containers else "", "state": state}]}
        if init_statuses:
            status["initContainerStatuses"] = list(init_statuses)
        await api.patch_status(pod_path, status)


async def pod_config_maps(api: ApiClient, pod: dict[str, Any], container: dict[str, Any]
                          ) -> dict[str, dict[str, Any]]:
    """Every ConfigMap and Secret one container of the pod names (configMap volumes,
    `configMapKeyRef`s, `envFrom`), keyed as `pods.prepare_container` reads them; a missing one is left
    out (the preparation says whether that is fatal)."""
    namespace = pod["metadata"]["namespace"]
    wanted = {v["configMap"]["name"] for v in pod["spec"].get("volumes") or [] if "configMap" in v}
    wanted |= {e["valueFrom"]["configMapKeyRef"]["name"] for e in container.get("env") or []
               if "configMapKeyRef" in (e.get("valueFrom") or {})}
    found: dict[str, dict[str, Any]] = {}
    for name in wanted:
        with contextlib.suppress(RuntimeError):
            found[name] = await api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    found.update(await env_sources(api, namespace, container))
    return found


async def env_sources(api: ApiClient, namespace: str, container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ConfigMaps and Secrets a container's `envFrom` names, keyed as `pods.env_from` reads them
    (a missing one is left out: env_from says whether that is fatal)."""
    found: dict[str, dict[str, Any]] = {}
    for source in container.get("envFrom") or []:
        for field, resource, key in (("configMapRef", "configmaps", lambda n: n), ("secretRef", "secrets", secret_key)):
            name = (source.get(field) or {}).get("name")
            if name:
                with contextlib.suppress(RuntimeError):
                    found[key(name)] = await api.request("GET", f"/api/v1/namespaces/{namespace}/{resource}/{name}")
    return found


def job_kubelet(api_url: str, workdir: Path) -> JobKubelet:
    """The node agent for `sandbox.server`: `async with job_kubelet(url, workdir): ...`."""
    return JobKubelet(api_url, workdir)
