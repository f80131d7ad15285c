"""The built images and containers run from them, for tests/test_images.py and the container sandbox
tests. Building is `docker/images.sh build` (what `make images` runs): once per test session, then
podman's layer cache makes a rebuild a no-op. A broken build fails the tests that need an image; it
never skips them (deselect with `-m 'not images'` on a machine that cannot build)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from sandbox.podman import podman

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "docker" / "images.sh"
BUILD_TIMEOUT_S = 1800
TAG = os.environ.get("SELFHEAL_IMAGE_TAG", "0.1.0")


@dataclass(frozen=True)
class Images:
    operator: str
    model_server: str
    build_output: str
    build_seconds: float


def build_images() -> Images:
    start = time.monotonic()
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), "build"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"the image build failed (exit {proc.returncode}):\n{output[-6000:]}")
    return Images(operator=os.environ.get("OPERATOR_IMAGE", f"ghcr.io/selfheal/operator:{TAG}"),
                  model_server=os.environ.get("MODEL_SERVER_IMAGE", f"ghcr.io/selfheal/model-server:{TAG}"),
                  build_output=output, build_seconds=time.monotonic() - start)


def container_name(prefix: str) -> str:
    return f"selfheal-test-{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def detached(name: str, run_args: list[str]):
    """`podman run -d` a container; on exit print its log tail if asked and remove it."""
    podman("run", "-d", *[a for a in run_args if a != "--rm"], timeout=120)
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "5", name, check=False, timeout=60)


def logs(name: str) -> str:
    proc = podman("logs", name, check=False, timeout=30)
    return (proc.stdout + proc.stderr)[-4000:]


def running(name: str) -> bool:
    proc = podman("inspect", "--format", "{{.State.Running}}", name, check=False, timeout=30)
    return proc.stdout.strip() == "true"


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_post_json(url: str, body: object, timeout: float = 10.0) -> tuple[int, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for_http(url: str, name: str, timeout: float) -> str:
    """Poll `url` until it answers 200 (returns the body); fail with the container's log if it
    stops or never answers."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = http_get(url, timeout=3)
            if status == 200:
                return body
            last = f"HTTP {status}: {body[:300]}"
        except OSError as exc:
            last = repr(exc)
        if not running(name):
            raise AssertionError(f"container {name} stopped before {url} answered; its log:\n{logs(name)}")
        time.sleep(1.0)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f}s ({last}); log of {name}:\n{logs(name)}")


def exec_python(name: str, code: str) -> subprocess.CompletedProcess:
    return podman("exec", name, "python", "-c", code, check=False, timeout=60)


# What a container started with the chart's securityContext must show from inside: uid/gid 10001, no
# capabilities at all, no_new_privs, and a root filesystem that refuses writes (EROFS) while /tmp-like
# mounts accept them.
SECURITY_PROBE = """
import errno, json, os, sys
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
result = {'uid': os.getuid(), 'gid': os.getgid(), 'cap_eff': status['CapEff'].strip(),
          'cap_bnd': status['CapBnd'].strip(), 'no_new_privs': status['NoNewPrivs'].strip()}
for path in ('/opt/selfheal/written-by-test', '/written-by-test', '/etc/written-by-test'):
    try:
        open(path, 'w').close()
        result[path] = 'written'
    except OSError as exc:
        result[path] = errno.errorcode.get(exc.errno, str(exc.errno))
writable = sys.argv[1:] or []
print(json.dumps(result))
"""


def security_report(name: str) -> dict:
    proc = exec_python(name, SECURITY_PROBE)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_hardened(report: dict) -> None:
    assert (report["uid"], report["gid"]) == (10001, 10001), report
    assert int(report["cap_eff"], 16) == 0 and int(report["cap_bnd"], 16) == 0, report
    assert report["no_new_privs"] == "1", report
    for path in ("/opt/selfheal/written-by-test", "/written-by-test", "/etc/written-by-test"):
        assert report[path] == "EROFS", (path, report)
