"""Honest readiness: the `Ready` condition, status.replicas/readyReplicas, and why pods do not serve.

`Ready` is True only when `spec.replicas` pods are ready *and* answer that they serve
`spec.adapter.version` (from their drift status, read by the timer's pod check). That children were
applied is the reconcile handler's own condition, `ChildrenApplied`. When pods cannot serve, the
reasons their kubelet gives (ImagePullBackOff, CrashLoopBackOff, ErrImagePull,
CreateContainerConfigError, failing init containers, Unschedulable, ...) become the Ready
condition's reason and message, and a warning Event when they appear or change (an Event
`PodsReady` when Ready turns True). `kubectl wait
--for=condition=Ready shm/NAME` therefore returns once the model really serves what its spec says.

The functions that read pods are pure (dicts in, facts out); `report_readiness` writes the status
patch and the Events.
"""
from __future__ import annotations

import re

import kopf

from shm_operator.context import ModelPass
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.status import pods_failing, ready_reason

# Waiting reasons of a container that will not become ready by waiting a little longer.
FAILING_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName",
                             "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
                             "RunContainerError", "PreCreateHookError", "PostStartHookError"})
READY_PROBLEMS_SHOWN = 5


def _terminating(pod: dict) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp")) or \
        (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _container_problem(container: dict, init: bool) -> tuple[str, str] | None:
    state, last_state = container.get("state") or {}, container.get("lastState") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    prefix = "Init:" if init else ""
    if waiting.get("reason") in FAILING_WAITING:
        message = waiting.get("message") or ""
        last = (last_state or {}).get("terminated") or {}
        if waiting["reason"] == "CrashLoopBackOff" and last:
            message = "; ".join(filter(None, [message, f"last exit code {last.get('exitCode')}"
                                                         f"{' (' + last['reason'] + ')' if last.get('reason') else ''}"]))
        return prefix + waiting["reason"], message
    if terminated and terminated.get("exitCode") not in (None, 0):
        return (prefix + (terminated.get("reason") or "Error"),
                f"exit code {terminated.get('exitCode')}: {terminated.get('message') or ''}".rstrip(": "))
    last = last_state.get("terminated") or {}
    if "running" in state and not container.get("ready") and container.get("restartCount") and \
            last.get("exitCode") not in (None, 0):
        # between two back-offs: running again, not ready, after an error (the loop goes on)
        return (prefix + "CrashLoopBackOff",
                f"restarted {container['restartCount']} times; last exit code {last['exitCode']}")
    return None


def condition_reason(text: str) -> str:
    """A kubelet's reason as a condition reason (CamelCase, letters, digits, '_', ',', ':'): what
    a kubelet or a runtime reports is not checked, and a bad reason would fail the whole check."""
    cleaned = re.sub(r"[^A-Za-z0-9_,:]", "", text or "").lstrip("0123456789_,:").rstrip(",:")
    return cleaned[:128] or "PodsFailing"


def pod_problem(pod: dict) -> tuple[str, str] | None:
    """Why a pod cannot serve, as (reason, message), or None if it is ready or just starting.
    Init containers first (the main container never starts before they succeed), then the
    containers, then the scheduler's verdict. (A Failed pod, e.g. evicted, is not counted at all:
    its ReplicaSet replaces it.)"""
    status = pod.get("status") or {}
    for key, init in (("initContainerStatuses", True), ("containerStatuses", False)):
        for container in status.get(key) or []:
            found = _container_problem(container, init)
            if found is not None:
                return found[0], f"container {container.get('name')}: {found[1]}".rstrip(": ")
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("reason") in ("Unschedulable",
                                                                             "CreateContainerConfigError"):
            return condition["reason"], condition.get("message") or ""
    return None


def pod_counts(pods: list[dict], ready) -> tuple[int, int]:
    """(pods that exist and are not terminating, of those the ready ones): status.replicas and
    status.readyReplicas."""
    live = [p for p in pods if not _terminating(p)]
    return len(live), sum(1 for p in live if ready(p))


def readiness(spec: SelfHealingModelSpec, pods: list[dict], ready,
              serving: dict[str, str | None]) -> tuple[bool, str, str]:
    """(Ready, reason, message). `ready(pod)` says whether a pod is ready, `serving` maps the
    name of each ready pod that answered to the adapter version it serves."""
    wanted, version = spec.replicas, spec.adapter.version
    at_spec = sum(1 for v in serving.values() if v == version)
    counts = f"{at_spec}/{wanted} pods ready and serving adapter {version}"
    if at_spec >= wanted:
        return True, "PodsReady", counts
    problems = [(p["metadata"]["name"], *found) for p in pods
                if not _terminating(p) and not ready(p) and (found := pod_problem(p)) is not None]
    problems = [(pod, condition_reason(reason), message) for pod, reason, message in problems]
    if problems:
        reasons = sorted({reason for _, reason, _ in problems})
        shown = "; ".join(f"{pod}: {reason}" + (f" ({message[:300]})" if message else "")
                          for pod, reason, message in problems[:READY_PROBLEMS_SHOWN])
        more = f"; and {len(problems) - READY_PROBLEMS_SHOWN} more" if len(problems) > READY_PROBLEMS_SHOWN else ""
        return False, condition_reason(reasons[0]) if len(reasons) == 1 else "PodsFailing", f"{counts}: {shown}{more}"
    ready_pods = sum(1 for p in pods if not _terminating(p) and ready(p))
    if ready_pods < wanted:
        return False, "PodsNotReady", f"{counts}; {ready_pods} ready, waiting for the others to start"
    others = sorted({str(v) for v in serving.values() if v != version})
    return False, "AdapterNotServed", f"{counts}; the others serve {', '.join(others) or 'nothing yet'}"


def report_readiness(ctx: ModelPass, *, pods: list[dict], ready, serving: dict) -> None:
    """Write Ready (stamped with the generation it was computed for, so `kubectl wait` never takes
    an old True for the new spec), status.replicas/readyReplicas, and a warning Event when pods
    start failing or fail for another reason; an Event when Ready turns True."""
    generation = ((ctx.body or {}).get("metadata") or {}).get("generation")
    ok, reason, message = readiness(ctx.spec, pods, ready, serving)
    before = ready_reason(ctx.working)
    ctx.set_condition("Ready", ok, reason, message[:4000], generation)
    if pods_failing(ctx.working) and reason != before:
        kopf.warn(ctx.body, reason=reason, message=message[:1000])
    elif ok and before is not None:   # Ready turned True
        kopf.info(ctx.body, reason="PodsReady", message=message[:1000])
    total, ready_count = pod_counts(pods, ready)
    status = ctx.status
    if (status.replicas, status.ready_replicas) != (total, ready_count):
        ctx.update(replicas=total, readyReplicas=ready_count)


def ready_for(status: dict, generation) -> bool:
    """Whether Ready is True for this generation (the timer then checks at its normal pace)."""
    return any(c.get("type") == "Ready" and c.get("status") == "True" and c.get("observedGeneration") == generation
               for c in status.get("conditions") or [])
