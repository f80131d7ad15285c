"""Kubernetes `Status` errors with the `reason`s clients act on (NotFound, AlreadyExists, Conflict, ...).

client-go decides what to do from `reason` and `code` (e.g. helm treats NotFound as "install", Kopf
retries a 422 JSON-patch test failure), so every failure the emulator returns is one of these.
"""
from __future__ import annotations

from typing import Any

import kmock


class ApiError(kmock.KubernetesError):
    """An API failure rendered as a `kind: Status` body with the given HTTP status and reason."""

    def __init__(self, status: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(status=status, reason=reason, message=message, details=details or {})

    def to_status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.status}


def _details(name: str | None, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"group": group, "kind": kind}
    if name:
        details["name"] = name
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    qualified = f"{plural}.{group}" if group else plural
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', _details(name, group, plural))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    qualified = f"{plural}.{group}" if group else plural
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists', _details(name, group, plural))


def conflict(plural: str, group: str, name: str, why: str) -> ApiError:
    qualified = f"{plural}.{group}" if group else plural
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
                    _details(name, group, plural))


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 with one cause per bad field: `{"field": "spec.replicas", "message": "...", "reason": ...}`."""
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    qualified = f"{kind}.{group}" if group else kind
    details = _details(name, group, kind)
    details["causes"] = causes
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: [{summary}]'
                    if len(causes) > 1 else f'{qualified} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unsupported_media_type(content_type: str, what: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", f"the body of type {content_type!r} is not supported: {what}")


def unprocessable_patch(message: str) -> ApiError:
    """What a real apiserver answers when a JSON-patch `test` op fails or a patch cannot apply."""
    return ApiError(422, "Invalid", message)
