"""The container runtime of the sandbox kubelet: `python -m sandbox up --runtime podman`.

The process runtime (the default) runs a pod's command as a local process, with mount paths rewritten
to local directories. This one runs the pod's real image with podman (`sandbox.podman` translates the
spec), so the pod gets what a cluster gives it: its image's filesystem, its `securityContext` (user,
read-only root, capabilities, no-new-privileges), its volumes at their real `mountPath`s, its `env`
and ports. Everything else is the process kubelet's: pod IPs on 127.0.0.N (the containers use the
host network and bind their pod IP), probes, restarts with backoff, graceful stops, Services, Job
status and termination messages.

Storage shared with pods: a cluster would mount network storage (a PVC, a bucket); here the
directories given with `--share DIR` are mounted into every pod and Job at the same path,
read-write. When a pod starts, they are given to the pod's user and `fsGroup` (recursively, as the
kubelet does for an `fsGroup` volume), so a pod running as 10001 can write what root wrote before.

Every container carries the label `io.selfheal.sandbox=<workdir>`; the kubelets remove theirs when
they stop, and `podman rm` of a killed `podman run` is done at once (a container outlives its client).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from sandbox.deployments import DeploymentKubelet
from sandbox.kubelet import ApiClient, JobKubelet, pod_config_maps
from sandbox.pods import PodProcess, PodSpecError
from sandbox.podman import pod_container, podman, podman_env

log = logging.getLogger("sandbox.containers")

LABEL = "io.selfheal.sandbox"
RUNTIMES = ("process", "podman")


def sandbox_label(workdir: Path) -> str:
    return hashlib.sha1(str(Path(workdir).resolve()).encode()).hexdigest()[:16]


def container_name(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    base = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"sbx-{meta['namespace']}-{meta['name']}")
    return f"{base[:100]}-{meta.get('uid', '')[:8]}"


def give_to_pod(paths: Sequence[str], pod: dict[str, Any]) -> None:
    """chown -R the shared directories to the pod's user and fsGroup (what the kubelet does for an
    fsGroup volume), so files root wrote before stay writable for the pod."""
    spec = pod.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    sc = ((spec.get("containers") or [{}])[0].get("securityContext")) or {}
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if uid is None:
        return
    gid = pod_sc.get("fsGroup", sc.get("runAsGroup", pod_sc.get("runAsGroup", uid)))
    for root in paths:
        for directory, dirs, files in os.walk(root):
            for name in [directory, *(os.path.join(directory, f) for f in files)]:
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(name, int(uid), int(gid))


def remove_container(name: str) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
        podman("rm", "--force", "--time", "0", name, check=False, timeout=60)


def remove_labelled(label: str) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError, PodSpecError):
        names = podman("ps", "--all", "--filter", f"label={LABEL}={label}", "--format", "{{.Names}}",
                       check=False, timeout=60).stdout.split()
        if names:
            podman("rm", "--force", "--time", "0", *names, check=False, timeout=120)


class ContainerPodProcess(PodProcess):
    """A Deployment pod as `podman run` of its image (attached: the client process is the pod's
    process for restarts, probes and signals; podman forwards SIGTERM to the container)."""

    def __init__(self, pod: dict[str, Any], ip: str, pod_dir: Path, on_change: Callable[[], None],
                 inflight: Callable[[str], int], shared: Sequence[str], label: str):
        super().__init__(pod, ip, pod_dir, on_change, inflight)
        self.shared, self.label = list(shared), label
        self.container_name = container_name(pod)

    def prepare(self, config_maps: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        give_to_pod(self.shared, self.pod)
        translated = pod_container(self.pod, self.container_name, self.pod_dir, self.ip, config_maps,
                                   shared=self.shared, labels={LABEL: self.label})
        self.config_volumes = dict(translated.config_volumes)
        return ["podman", "run", *translated.args], podman_env()

    def prepare_init(self, config_maps: dict[str, dict[str, Any]]) -> list[tuple[list[str], dict[str, str]]]:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        inits = []
        for index, init in enumerate(self.init_containers):
            translated = pod_container(self.pod, f"{self.container_name}-init{index}", self.pod_dir, self.ip,
                                       config_maps, shared=self.shared, labels={LABEL: self.label}, container=init)
            inits.append((["podman", "run", *translated.args], podman_env()))
        return inits

    def _kill_leftovers(self) -> None:
        super()._kill_leftovers()
        if self.process is None or self.process.returncode is not None:
            remove_container(self.container_name)


class ContainerDeploymentKubelet(DeploymentKubelet):
    def __init__(self, api_url: str, workdir: Path, shared: Sequence[str]):
        super().__init__(api_url, workdir)
        self.shared, self.label = list(shared), sandbox_label(workdir)

    def _pod_process(self, pod: dict, ip: str, pod_dir: Path) -> PodProcess:
        return ContainerPodProcess(pod, ip, pod_dir, self.dirty.set, lambda address: self.inflight[address],
                                   self.shared, self.label)

    async def __aexit__(self, *exc: object) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            await asyncio.to_thread(remove_labelled, self.label)


class ContainerJobKubelet(JobKubelet):
    """Each Job attempt as `podman run` of its image; the termination message is the file mounted at
    the container's `terminationMessagePath`."""

    def __init__(self, api_url: str, workdir: Path, shared: Sequence[str]):
        super().__init__(api_url, workdir)
        self.shared, self.label = list(shared), sandbox_label(workdir)
        self.names: dict[asyncio.Task, str] = {}  # a Job's runner task -> its current container

    async def _prepare(self, api: ApiClient, pod: dict[str, Any], container: dict[str, Any],
                       pod_dir: Path) -> tuple[list[str], dict[str, str], Path, Path]:
        pod_dir.mkdir(parents=True, exist_ok=True)
        config_maps = await pod_config_maps(api, pod, container)   # pod_container says whether a missing one is fatal
        await asyncio.to_thread(give_to_pod, self.shared, pod)
        name = container_name(pod)
        if container is not (pod["spec"].get("containers") or [None])[0]:   # an init container
            name = f"{name}-{container['name']}"
        try:
            translated = pod_container(pod, name, pod_dir, "127.0.0.1", config_maps,
                                       shared=self.shared, labels={LABEL: self.label}, container=container)
        except PodSpecError as exc:
            raise RuntimeError(str(exc)) from exc
        self.names[asyncio.current_task()] = name  # _kill runs in the same task
        return (["podman", "run", *translated.args], podman_env(), pod_dir / f"{container['name']}.log",
                translated.termination_log)

    async def _kill(self, process: asyncio.subprocess.Process) -> int:
        """Deadline or deletion: stop the client, then the container (it outlives a killed client)."""
        code = await super()._kill(process)
        name = self.names.pop(asyncio.current_task(), None)
        if name:
            await asyncio.to_thread(remove_container, name)
        return code

    async def __aexit__(self, *exc: object) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            await asyncio.to_thread(remove_labelled, self.label)


def container_agents(shared: Sequence[str]) -> tuple[Callable, Callable]:
    """The node agents of `sandbox.server` for `--runtime podman`."""
    shared = [str(Path(p).resolve()) for p in shared]
    missing = [p for p in shared if not Path(p).is_dir()]
    if missing:
        raise PodSpecError(f"--share: {', '.join(missing)} is not a directory")
    podman_env()  # fails early, naming `make images`, when podman was never set up here

    def jobs(api_url: str, workdir: Path) -> ContainerJobKubelet:
        return ContainerJobKubelet(api_url, workdir, shared)

    def deployments(api_url: str, workdir: Path) -> ContainerDeploymentKubelet:
        return ContainerDeploymentKubelet(api_url, workdir, shared)

    return jobs, deployments
