"""An S3-compatible object store for the sandbox: moto in server mode, as its own process.

No MinIO server can be installed here; `moto[server]` (PyPI) answers the S3 API on a local port, so
the real s3fs/botocore clients in the operator, the pods, the storage-initializer and the heal Jobs
talk HTTP to it exactly as to S3. State is in the process's memory.

    python -m sandbox.s3 --port 9000            # serves until Ctrl-C; prints the env to use

In Python (tests): `with S3Server() as s3: s3.env` gives AWS_ENDPOINT_URL and dummy credentials,
`s3.make_bucket(name)` creates a bucket, and `s3.secret(name)` is a Secret manifest holding that env
for `spec.storage.secretName`.
"""
from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sandbox.env import free_port
from sandbox.server import stop_process

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """`python -m moto.server` on 127.0.0.1:<port> for the life of the context."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, host: str = "127.0.0.1"):
        self.host, self.port = host, port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs (botocore reads AWS_ENDPOINT_URL since 1.31; s3fs goes through it)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def secret(self, name: str) -> dict:
        """A Secret with the client env, for spec.storage.secretName (envFrom)."""
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in self.env.items()}}

    def __enter__(self) -> "S3Server":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"})
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode} (is moto[server] installed?)")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"moto server did not answer on {self.endpoint} within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10)

    def filesystem(self):
        """An s3fs filesystem on this server (fresh instance: no fsspec cache across servers)."""
        import s3fs
        return s3fs.S3FileSystem(key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                 endpoint_url=self.endpoint, skip_instance_cache=True)

    def make_bucket(self, name: str) -> None:
        self.filesystem().mkdir(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.s3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args(argv)
    with S3Server(args.port) as server:
        for bucket in args.bucket:
            server.make_bucket(bucket)
        for key, value in server.env.items():
            print(f"export {key}={value}", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
