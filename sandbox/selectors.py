"""Label and field selectors, as used on list/watch requests (`?labelSelector=a=b,c in (x,y),!d`).

Helm finds its release Secrets by label; `kubectl wait` watches one object by `metadata.name`.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from sandbox import apierrors

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")

Matcher = Callable[[dict[str, str]], bool]


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside `in (...)` parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return terms


def _parse_term(term: str, allow_sets: bool) -> Matcher:
    eq = _EQ_RE.match(term)
    if eq:
        key, op, value = eq.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    match = _SET_RE.match(term) if allow_sets else None
    if match:
        negated, key, op, values_text = match.groups()
        if op:
            if negated:
                raise apierrors.bad_request(f"unable to parse requirement: {term!r}")
            values = {v.strip() for v in values_text.split(",") if v.strip()}
            if op == "in":
                return lambda labels: labels.get(key) in values
            return lambda labels: labels.get(key) not in values
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise apierrors.bad_request(f"unable to parse requirement: {term!r} is not a valid selector term")


def parse_label_selector(text: str | None) -> Matcher:
    """A predicate over an object's labels; an empty selector matches everything."""
    if not text:
        return lambda labels: True
    matchers = [_parse_term(term, allow_sets=True) for term in _split_terms(text)]
    return lambda labels: all(m(labels) for m in matchers)


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_field_selector(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """A predicate over a whole object for `metadata.name=x,status.phase!=Running` style selectors."""
    if not text:
        return lambda obj: True
    checks = []
    for term in _split_terms(text):
        match = _EQ_RE.match(term)
        if not match:
            raise apierrors.bad_request(f"invalid field selector: {term!r}")
        checks.append(match.groups())

    def matches(obj: dict[str, Any]) -> bool:
        for path, op, value in checks:
            actual = _field_value(obj, path)
            if (actual == value) != (op != "!="):
                return False
        return True
    return matches
