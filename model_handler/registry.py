"""Versioned adapters on one fsspec storage URI, shared by the healing Job, the pods and the operator.

Layout: `<uri>/<namespace>/<model>/adapters/<version>/adapter.safetensors` + `meta.json`.

Object stores have no transactions, so `meta.json` is the commit marker: `put` writes the adapter
bytes first and `meta.json` last, each under a temporary name moved into place. A reader that sees
`meta.json` therefore sees a complete adapter, and a writer that crashed in between leaves a version
that is never listed and that a retry of the same Job may overwrite. On a local filesystem a version
is staged in a private directory and renamed into place in one step, so even two writers racing
for one name never mix their files. Readers still check the sha256 recorded in `meta.json`,
because storage can rot or be edited by hand after the commit.

Every storage failure (unreachable, permission denied, disk full) surfaces as `RegistryError` naming
the URI and the operation, so callers handle one exception type and logs say where it happened.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem

from model_handler.redact import redact, redact_uri
from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

BASE_VERSION = "base"
ADAPTER_FILE = "adapter.safetensors"
META_FILE = "meta.json"
ADAPTER_STATES = ("candidate", "promoted", "rejected", "rolled-back")
# Versions end up in Kubernetes labels and file names: keep them label-friendly.
VERSION_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
# The numbered versions heals create: v1, v2, ... (no leading zero, so each number has one name).
VERSION_NUMBER = re.compile(r"v([1-9][0-9]*)")
# Namespace and model become path components: Kubernetes names, never "/" or "..".
_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_SHA256_PATTERN = r"^[0-9a-f]{64}$"
_TEMP_MARK = ".tmp-"
_COMMIT_LOCK = ".commit.lock"

AdapterState = Literal["candidate", "promoted", "rejected", "rolled-back"]


class RegistryError(Exception):
    """Storage could not do what was asked. `.uri` and `.operation` say where and what."""

    def __init__(self, message: str, uri: str | None = None, operation: str | None = None):
        # Messages reach logs, status and Events: never with the URI's credentials (user info, tokens).
        super().__init__(redact(message))
        self.uri = redact_uri(uri) if uri else uri
        self.operation = operation


class AdapterNotFoundError(RegistryError):
    """No committed adapter of that version."""


class IncompleteAdapterError(AdapterNotFoundError):
    """The adapter bytes are there but `meta.json` is not: a write that never committed."""


class AdapterExistsError(RegistryError):
    """A committed version is never overwritten."""


class CorruptAdapterError(RegistryError):
    """The stored adapter or its meta.json is damaged (hash mismatch, bad JSON, bad schema)."""


class TrainingWindow(BaseModel):
    """The slice of sampled traffic an adapter was trained on."""

    model_config = ConfigDict(extra="ignore")

    start: AwareDatetime | None = Field(None, description="Time of the oldest row used (ISO 8601).")
    end: AwareDatetime | None = Field(None, description="Time of the newest row used (ISO 8601).")
    rows: int = Field(0, ge=0, description="Number of traffic rows used.")

    @field_validator("start", "end")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _start_before_end(self) -> "TrainingWindow":
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"training window starts ({self.start.isoformat()}) after it ends "
                             f"({self.end.isoformat()})")
        return self


class AdapterMeta(BaseModel):
    """What `meta.json` records about one adapter version."""

    # Unknown keys are ignored on read so an older reader survives a newer writer; `put` still
    # refuses unknown keys so a typo never silently loses information.
    model_config = ConfigDict(extra="ignore")

    version: str = Field(..., pattern=VERSION_PATTERN.pattern, description="The version name.")
    parent: str | None = Field(None, description="Version this adapter was healed from; None means base.")
    sha256: str = Field(..., pattern=_SHA256_PATTERN, description="sha256 of adapter.safetensors.")
    base_model_hash: str = Field(..., min_length=1, description="Hash of the backbone it was trained for.")
    rules_hash: str = Field(..., min_length=1, description="Hash of the rule set used while healing.")
    training_window: TrainingWindow = Field(default_factory=TrainingWindow)
    creator: str = Field("", description="Who made it, e.g. the healing Job's name.")
    created: AwareDatetime = Field(default_factory=lambda: datetime.now(timezone.utc),
                                   description="When it was made (stored as UTC).")
    labels_used: int = Field(0, ge=0, description="Ground-truth labels used while healing.")
    gate: dict[str, Any] = Field(default_factory=dict, description="Promotion-gate metrics and checks.")
    state: AdapterState = Field("candidate", description="candidate, promoted, rejected or rolled-back.")
    reason: str = Field("", description="Why the state is what it is.")

    @field_validator("parent", mode="before")
    @classmethod
    def _base_parent_is_none(cls, value: Any) -> Any:
        return None if value == BASE_VERSION else value

    @field_validator("parent")
    @classmethod
    def _parent_is_a_version(cls, value: str | None) -> str | None:
        if value is not None and not VERSION_PATTERN.match(value):
            raise ValueError(f"parent {value!r} is not a valid version name")
        return value

    @field_validator("created")
    @classmethod
    def _created_in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def check_version_name(version: str) -> str:
    """Return `version` if it may name a stored adapter, else raise ValueError saying why."""
    if not isinstance(version, str):
        raise ValueError(f"adapter version must be a string, got {type(version).__name__}")
    if version == BASE_VERSION:
        raise ValueError(f"{BASE_VERSION!r} is reserved for the identity adapter and is never stored")
    if not VERSION_PATTERN.match(version):
        raise ValueError(f"adapter version {version!r} must match {VERSION_PATTERN.pattern} "
                         "(lower-case letters, digits, '.', '-'; at most 63 characters)")
    return version


def check_state(state: str) -> str:
    if state not in ADAPTER_STATES:
        raise ValueError(f"unknown adapter state {state!r}; expected one of {', '.join(ADAPTER_STATES)}")
    return state


def version_number(version: str) -> int | None:
    """n of a `v<n>` version, else None."""
    match = VERSION_NUMBER.fullmatch(version)
    return int(match.group(1)) if match else None


def next_version(existing: Iterable[str]) -> str:
    """v1, v2, ...: one past the highest `v<n>` taken. Numbers are never reused, not even one whose
    adapter was deleted, so a version name always means one adapter in history and Events.
    Other names (`base`, hand-made ones such as `v2-hotfix`, `v01`) are left alone.

    The one rule for naming a new version: the registry (`AdapterRegistry.next_version`) and the
    operator (which names a heal Job's version once, when it creates the Job) both use it."""
    numbers = [n for n in map(version_number, existing) if n is not None]
    return f"v{max(numbers, default=0) + 1}"


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value, so v2 < v10."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


class Storage:
    """An fsspec filesystem rooted at `<uri>/<namespace>/<model>`, with every OSError wrapped."""

    def __init__(self, uri: str, namespace: str, model: str):
        for what, value in (("namespace", namespace), ("model", model)):
            if not isinstance(value, str) or not _NAME_PATTERN.match(value):
                raise ValueError(f"{what} {value!r} is not a Kubernetes name "
                                 "(lower-case letters, digits, '.', '-')")
        if not isinstance(uri, str) or not uri:
            raise ValueError("storage URI must be a non-empty string")
        self.uri = uri
        self.namespace = namespace
        self.model = model
        try:
            # No listings cache: other processes write here (pods their traffic, the Job its
            # candidates), and s3fs/gcsfs would keep answering `find`/`exists` from their first
            # listing in this process, which such writes never invalidate.
            self.fs, self.root = fsspec.core.url_to_fs(uri, use_listings_cache=False)
        except (ImportError, ValueError) as exc:  # unknown protocol or its backend not installed
            raise RegistryError(f"storage {redact_uri(uri)}: cannot open: {exc}", uri, "open") from exc
        self.root = self.root.rstrip("/")
        self.base = f"{self.root}/{namespace}/{model}"
        local = isinstance(self.fs, LocalFileSystem)
        # On filesystems with real directories a missing root is a misconfiguration (a volume that
        # was not mounted), not an empty registry; object stores create prefixes on write.
        self._root_must_exist = local
        # The local filesystem fails with OSError only; remote backends (s3fs, gcsfs, http) let
        # their client's own errors through untranslated (connection refused, no credentials).
        self._storage_errors: tuple[type[Exception], ...] = (OSError,) if local else (Exception,)

    def where(self) -> str:
        return f"{redact_uri(self.uri)} ({self.namespace}/{self.model})"

    def path(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    @contextmanager
    def wrap(self, operation: str) -> Iterator[None]:
        try:
            yield
        except RegistryError:
            raise
        except self._storage_errors as exc:
            detail = str(exc) if isinstance(exc, OSError) and str(exc) else f"{type(exc).__name__}: {exc}"
            raise RegistryError(f"storage {self.where()}: {operation} failed: {detail.rstrip(': ')}",
                                self.uri, operation) from exc

    def require_root(self, operation: str) -> None:
        if not self._root_must_exist:
            return
        with self.wrap(operation):
            if not self.fs.isdir(self.root or "/"):
                raise RegistryError(f"storage {self.where()}: {operation} failed: storage root "
                                    f"{self.root!r} does not exist or is not a directory",
                                    self.uri, operation)

    def read(self, path: str, operation: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        with self.wrap(operation):
            try:
                return self.fs.cat_file(path)
            except FileNotFoundError:
                return None

    def exists(self, path: str, operation: str) -> bool:
        with self.wrap(operation):
            return self.fs.exists(path)

    def find(self, path: str, operation: str, maxdepth: int | None = None) -> list[str]:
        """Files under `path` (none if it does not exist); checks the root when nothing is there."""
        with self.wrap(operation):
            try:  # fsspec's default skips unreadable directories silently: ask it to raise
                found = self.fs.find(path, maxdepth=maxdepth, on_error="raise")
            except FileNotFoundError:
                found = []
        if not found:
            self.require_root(operation)
        return found

    def remove(self, path: str, operation: str) -> None:
        """Delete a file; one already gone (another writer got there first) is fine."""
        with self.wrap(operation):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass

    def write_atomic(self, path: str, data: bytes, operation: str) -> None:
        """Write under a temporary name beside `path`, then move it into place (replacing it)."""
        self.require_root(operation)
        directory, name = path.rsplit("/", 1)
        temp = f"{directory}/.{name}{_TEMP_MARK}{uuid.uuid4().hex}"
        with self.wrap(operation):
            self.fs.makedirs(directory, exist_ok=True)
            try:
                with self.fs.open(temp, "wb") as handle:
                    handle.write(data)
                self.fs.mv(temp, path)
            finally:
                self._discard(temp)

    def write_once(self, directory: str, files: list[tuple[str, bytes]], operation: str) -> bool:
        """Create `directory` holding `files`, written in order; the last one is the commit marker.

        Returns False, changing nothing, when the directory is already committed. A directory
        without the marker is a crashed writer's leftover and is replaced. On a local filesystem
        the files are staged in a private directory and renamed into place in one step under a
        lock, so writers racing for one name cannot mix their files; object stores have no rename,
        so there the files are moved into place one by one, marker last.
        """
        self.require_root(operation)
        marker = f"{directory}/{files[-1][0]}"
        with self.wrap(operation):
            if self.fs.exists(marker):
                return False
            if not isinstance(self.fs, LocalFileSystem):
                for name, data in files[:-1]:
                    self.write_atomic(f"{directory}/{name}", data, operation)
                if self.fs.exists(marker):
                    return False
                self.write_atomic(marker, files[-1][1], operation)
                return True
            parent, name = directory.rsplit("/", 1)
            staged = f"{parent}/.{name}{_TEMP_MARK}{uuid.uuid4().hex}"
            self.fs.makedirs(staged)
            try:
                for file_name, data in files:
                    with self.fs.open(f"{staged}/{file_name}", "wb") as handle:
                        handle.write(data)
                return self._rename_into_place(staged, directory, marker)
            finally:
                self._discard(staged)

    def _rename_into_place(self, staged: str, directory: str, marker: str) -> bool:
        # Writers of one model on this host (or on a filesystem with shared locks) take turns for
        # the check-clean-rename step only; the kernel drops the lock if a writer dies holding it.
        parent = directory.rsplit("/", 1)[0]
        with open(f"{parent}/{_COMMIT_LOCK}", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.fs.exists(marker):
                return False
            if self.fs.exists(directory):  # a crashed writer's uncommitted leftover
                self.fs.rm(directory, recursive=True)
            os.rename(staged, directory)  # also refuses a non-empty target, should one appear
            return True

    def _discard(self, temp: str) -> None:
        try:
            if self.fs.exists(temp):
                self.fs.rm(temp, recursive=True)
        except OSError:
            pass  # a leftover temporary file or directory is never read: its name marks it


class AdapterRegistry:
    """Adapter versions of one model: write once, verify on read, state changes rewrite meta.json."""

    def __init__(self, uri: str, namespace: str, model: str):
        self.storage = Storage(uri, namespace, model)

    @property
    def uri(self) -> str:
        return self.storage.uri

    def _dir(self, version: str) -> str:
        return self.storage.path("adapters", version)

    def put(self, version: str, data: bytes, meta: dict) -> AdapterMeta:
        """Store a new version: adapter bytes first, meta.json (the commit marker) last.

        A version left incomplete by a writer that crashed (data, no meta.json) is replaced, so a
        retried healing Job can reuse its version name; a committed version never is.
        """
        check_version_name(version)
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise ValueError(f"adapter {version}: data must be non-empty bytes")
        data = bytes(data)
        record = self._new_meta(version, data, meta)
        operation = f"put {version}"
        if self.storage.exists(f"{self._dir(version)}/{META_FILE}", operation):
            raise AdapterExistsError(f"adapter {version} already exists in {self.storage.where()}; "
                                     "versions are never overwritten, pick a new name "
                                     f"(next free: {self.next_version()})", self.uri, operation)
        if record.parent is not None:
            self.meta(record.parent)  # raises AdapterNotFoundError naming the known versions
        files = [(ADAPTER_FILE, data), (META_FILE, record.to_json().encode())]
        if not self.storage.write_once(self._dir(version), files, operation):
            raise AdapterExistsError(f"adapter {version} was committed by another writer while this "
                                     f"one wrote it ({self.storage.where()})", self.uri, operation)
        return record

    def _new_meta(self, version: str, data: bytes, meta: dict) -> AdapterMeta:
        if not isinstance(meta, dict):
            raise ValueError(f"adapter {version}: meta must be a dict, got {type(meta).__name__}")
        unknown = set(meta) - set(AdapterMeta.model_fields)
        if unknown:
            raise ValueError(f"adapter {version}: unknown meta keys {sorted(unknown)}; "
                             f"known: {sorted(AdapterMeta.model_fields)}")
        window = meta.get("training_window")
        if isinstance(window, dict) and set(window) - set(TrainingWindow.model_fields):
            raise ValueError(f"adapter {version}: unknown training_window keys "
                             f"{sorted(set(window) - set(TrainingWindow.model_fields))}; "
                             f"known: {sorted(TrainingWindow.model_fields)}")
        digest = hashlib.sha256(data).hexdigest()
        for key, computed in (("version", version), ("sha256", digest)):
            if key in meta and meta[key] != computed:
                raise ValueError(f"adapter {version}: meta {key} {meta[key]!r} does not match "
                                 f"{computed!r}; leave it out, put() fills it in")
        if "state" in meta:
            check_state(meta["state"])
        if meta.get("parent") == version:
            raise ValueError(f"adapter {version} cannot be its own parent")
        try:
            return AdapterMeta(**{**meta, "version": version, "sha256": digest})
        except ValidationError as exc:
            raise ValueError(f"adapter {version}: invalid meta: {_describe(exc)}") from exc

    def meta(self, version: str) -> AdapterMeta:
        """The committed meta of `version`."""
        if version == BASE_VERSION:
            raise AdapterNotFoundError(f"{BASE_VERSION!r} is the identity adapter: it is built in, "
                                       "not stored in the registry", self.uri, f"meta {version}")
        check_version_name(version)
        operation = f"read {version}"
        raw = self.storage.read(f"{self._dir(version)}/{META_FILE}", operation)
        if raw is None:
            if self.storage.exists(f"{self._dir(version)}/{ADAPTER_FILE}", operation):
                raise IncompleteAdapterError(
                    f"adapter {version} in {self.storage.where()} is incomplete: its data was "
                    f"written but {META_FILE} never was (the writer stopped before committing)",
                    self.uri, operation)
            known = ", ".join(self.versions()) or "none"
            raise AdapterNotFoundError(f"adapter {version} not found in {self.storage.where()}; "
                                       f"known versions: {known}", self.uri, operation)
        try:
            record = AdapterMeta.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptAdapterError(f"adapter {version}: {META_FILE} is corrupt: {_describe(exc)}",
                                      self.uri, operation) from exc
        if record.version != version:
            raise CorruptAdapterError(f"adapter {version}: {META_FILE} names version "
                                      f"{record.version!r}", self.uri, operation)
        return record

    def get(self, version: str) -> tuple[bytes, AdapterMeta]:
        """The adapter bytes and meta, after checking the bytes against the recorded sha256."""
        record = self.meta(version)
        operation = f"read {version}"
        data = self.storage.read(f"{self._dir(version)}/{ADAPTER_FILE}", operation)
        if data is None:
            raise CorruptAdapterError(f"adapter {version}: {META_FILE} is committed but "
                                      f"{ADAPTER_FILE} is missing", self.uri, operation)
        actual = hashlib.sha256(data).hexdigest()
        if actual != record.sha256:
            raise CorruptAdapterError(f"adapter {version}: sha256 mismatch in {self.storage.where()}: "
                                      f"expected {record.sha256}, actual {actual}",
                                      self.uri, operation)
        return data, record

    def versions(self) -> list[str]:
        """Committed versions (those with meta.json), in natural order: v2 before v10."""
        adapters = self.storage.path("adapters")
        found = self.storage.find(adapters, "list versions", maxdepth=2)
        names = set()
        for path in found:
            relative = path[len(adapters):].strip("/").split("/")
            if len(relative) == 2 and relative[1] == META_FILE and VERSION_PATTERN.match(relative[0]):
                names.add(relative[0])
        names.discard(BASE_VERSION)
        return sorted(names, key=natural_key)

    def set_state(self, version: str, state: str, reason: str = "") -> AdapterMeta:
        """Change the state (and reason) by atomically rewriting meta.json; the data is untouched."""
        check_state(state)
        updated = self.meta(version).model_copy(update={"state": state, "reason": reason})
        self.storage.write_atomic(f"{self._dir(version)}/{META_FILE}", updated.to_json().encode(),
                                  f"set state of {version} to {state}")
        return updated

    def next_version(self) -> str:
        """`next_version` of the committed versions: `v<n+1>` for the largest `v<n>`, else `v1`."""
        return next_version(self.versions())

    def lineage(self, version: str) -> list[str]:
        """`[version, parent, grandparent, ..., "base"]`, following each meta's parent."""
        chain = [version]
        current = self.meta(version)
        while current.parent is not None:
            if current.parent in chain:
                raise CorruptAdapterError(f"adapter lineage of {version} loops: "
                                          f"{' -> '.join(chain + [current.parent])}",
                                          self.uri, f"lineage {version}")
            chain.append(current.parent)
            current = self.meta(current.parent)
        return chain + [BASE_VERSION]


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'document'}: {err['msg']}"
                     for err in exc.errors())
