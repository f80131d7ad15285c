"""Pods as podman containers: a pod's container spec translated to `podman run` arguments.

Used by the container runtime of the sandbox kubelet (`python -m sandbox up --runtime podman`) and by
the image tests (tests/test_images.py). podman runs rootful with the repo's own configuration and
storage, written by `docker/images.sh` under `$SELFHEAL_PODMAN_DIR` (default `.work/podman`), where
the images were built; nothing here reads /etc/containers.

What a kubelet would apply is applied, and anything else in a `securityContext` is refused with a
`PodSpecError` naming it (never silently dropped):
- `runAsUser`/`runAsGroup` (container over pod) -> `--user U:G`; `runAsNonRoot` is checked against the
  resolved user; `fsGroup` and `supplementalGroups` -> `--group-add`;
- `readOnlyRootFilesystem` -> `--read-only` without podman's extra writable tmpfs mounts, so only the
  pod's volumes are writable, as in Kubernetes;
- `allowPrivilegeEscalation: false` -> `no-new-privileges`; `capabilities.drop`/`add`;
  `seccompProfile` `RuntimeDefault` (podman's default profile) or `Unconfined`; `privileged`.
The network is the host's (a pod binds its own loopback IP, as with the process kubelet).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from sandbox.pods import PodSpecError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINER_SECURITY_KEYS = {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
                           "allowPrivilegeEscalation", "capabilities", "seccompProfile", "privileged"}
POD_SECURITY_KEYS = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups", "seccompProfile"}


class Mount(NamedTuple):
    """A bind mount of a host path (`source`), or a tmpfs when `source` is None."""
    source: str | None
    target: str
    read_only: bool = False


def podman_dir() -> Path:
    return Path(os.environ.get("SELFHEAL_PODMAN_DIR") or REPO_ROOT / ".work" / "podman")


def podman_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for running podman on the storage `docker/images.sh` built into."""
    directory = podman_dir()
    conf, storage = directory / "containers.conf", directory / "storage.conf"
    if not (conf.is_file() and storage.is_file()):
        raise PodSpecError(f"no podman configuration in {directory}: build the images first (`make images`)")
    return {**(os.environ if environ is None else environ),
            "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run one podman command on the repo's storage; on failure the error holds podman's stderr."""
    proc = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def image_user(image: str) -> str:
    return podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()


def security_args(pod_context: dict[str, Any] | None, container_context: dict[str, Any] | None,
                  image_user_of: Any = None) -> list[str]:
    """podman flags for a pod's and its container's securityContext (the container's wins)."""
    pod_sc, sc = pod_context or {}, container_context or {}
    for name, context, known in (("pod", pod_sc, POD_SECURITY_KEYS), ("container", sc, CONTAINER_SECURITY_KEYS)):
        unknown = sorted(set(context) - known)
        if unknown:
            raise PodSpecError(f"{name} securityContext fields {unknown} are not supported by the podman runtime")
    args: list[str] = []
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if user is not None:
        args.append(f"--user={int(user)}:{int(group if group is not None else user)}")
    elif group is not None:
        raise PodSpecError("runAsGroup without runAsUser is not supported by the podman runtime")
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        effective = str(user) if user is not None else (image_user_of() if image_user_of else "")
        name = effective.split(":")[0]
        if not name.isdigit() or int(name) == 0:
            # the kubelet's rule: the user must be numeric and non-zero to be verified
            raise PodSpecError(f"runAsNonRoot is set but the container would run as {effective or 'root'!r}")
    for extra in [pod_sc.get("fsGroup"), *(pod_sc.get("supplementalGroups") or [])]:
        if extra is not None:
            args.append(f"--group-add={int(extra)}")
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("privileged"):
        args.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    capabilities = sc.get("capabilities") or {}
    args += [f"--cap-drop={c}" for c in capabilities.get("drop") or []]
    args += [f"--cap-add={c}" for c in capabilities.get("add") or []]
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args.append("--security-opt=seccomp=unconfined")
    elif seccomp != "RuntimeDefault":
        raise PodSpecError(f"seccompProfile {seccomp!r} is not supported by the podman runtime")
    return args


def run_args(name: str, image: str, container: dict[str, Any], pod_spec: dict[str, Any],
             env: dict[str, str], mounts: Iterable[Mount], argv: list[str], labels: dict[str, str] | None = None,
             image_user_of: Any = None) -> list[str]:
    """`podman run` arguments (without `podman run`) for one container, attached (no `-d`).

    `argv` is the container's command + args, already expanded; a container without `command` runs
    the image's entrypoint with `args`."""
    if not image:
        raise PodSpecError(f"container {container.get('name')!r} has no image")
    args = [f"--name={name}", "--replace", "--rm", "--network=host", "--pull=never", "--init=false",
            *security_args(pod_spec.get("securityContext"), container.get("securityContext"), image_user_of)]
    for key, value in (labels or {}).items():
        args.append(f"--label={key}={value}")
    for mount in mounts:
        if mount.source is None:
            args.append(f"--tmpfs={mount.target}:rw,mode=1777")
        else:
            args.append(f"--volume={mount.source}:{mount.target}:{'ro' if mount.read_only else 'rw'}")
    for key, value in env.items():
        args.append(f"--env={key}={value}")
    if container.get("workingDir"):
        args.append(f"--workdir={container['workingDir']}")
    if container.get("command"):
        command = argv[:len(container["command"])]
        rest = argv[len(container["command"]):]
        args += [f"--entrypoint={command[0]}", image, *command[1:], *rest]
    else:
        args += [image, *argv]
    return args


class PodContainer(NamedTuple):
    """One pod's first container as a podman container: `podman run` arguments and what backs them."""
    args: list[str]
    config_volumes: dict[str, tuple[dict[str, Any], Path]]  # volume name -> (configMap source, host dir)
    termination_log: Path


def pod_container(pod: dict[str, Any], name: str, pod_dir: Path, ip: str, config_maps: dict[str, dict[str, Any]],
                  shared: Iterable[str] = (), empty_dir_tmpfs: bool = False,
                  labels: dict[str, str] | None = None, container: dict[str, Any] | None = None) -> PodContainer:
    """Translate a pod's container (the first one unless `container` names another, e.g. an init
    container, whose termination log is then `termination-log-<name>`) the way a kubelet would:
    - `configMap` volumes are projected under `<pod_dir>/volumes/<name>` and mounted read-only;
    - `emptyDir` volumes are host directories there owned by the pod's user and `fsGroup` (a tmpfs
      with `medium: Memory`, or every one with `empty_dir_tmpfs`);
    - the `terminationMessagePath` is a file in `pod_dir` the container may write;
    - each path in `shared` (the sandbox's stand-in for network storage: the storage URI's directory,
      the model archives) is mounted read-write at the same path;
    - `env` (values, configMapKeyRef, the downward API) and `$(VAR)` in command/args are expanded."""
    from sandbox.pods import DEFAULT_TERMINATION_PATH, container_env, expand, mounted_volumes

    spec = pod["spec"]
    containers = spec.get("containers") or []
    if not containers:
        raise PodSpecError("the pod has no containers")
    main = container is None or container is containers[0]
    container = containers[0] if container is None else container
    pod_sc, sc = spec.get("securityContext") or {}, container.get("securityContext") or {}
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = pod_sc.get("fsGroup", sc.get("runAsGroup", pod_sc.get("runAsGroup", uid)))
    mounts: list[Mount] = []
    config_volumes: dict[str, tuple[dict[str, Any], Path]] = {}
    for mount, volume, local in mounted_volumes(spec, container, pod_dir, config_maps, config_volumes):
        if "configMap" in volume:
            mounts.append(Mount(str(local), mount["mountPath"], True))
        elif empty_dir_tmpfs or (volume["emptyDir"] or {}).get("medium") == "Memory":
            mounts.append(Mount(None, mount["mountPath"]))
        else:
            local.mkdir(parents=True, exist_ok=True)
            if uid is not None:
                os.chown(local, int(uid), int(gid if gid is not None else uid))
            local.chmod(0o2775)
            mounts.append(Mount(str(local), mount["mountPath"], bool(mount.get("readOnly"))))
    termination_log = pod_dir / ("termination-log" if main else f"termination-log-{container['name']}")
    termination_log.parent.mkdir(parents=True, exist_ok=True)
    termination_log.write_text("")
    termination_log.chmod(0o666)
    mounts.append(Mount(str(termination_log), container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH)))
    mounts += [Mount(str(path), str(path)) for path in shared]
    env = container_env(container, pod, ip, config_maps, lambda text: text)
    argv = [expand(str(a), env) for a in (container.get("command") or []) + (container.get("args") or [])]
    image = container.get("image", "")
    args = run_args(name, image, container, spec, env, mounts, argv, labels,
                    image_user_of=lambda: image_user(image))
    return PodContainer(args, config_volumes, termination_log)
