"""Turn a prediction request body into a float32 [N, F] array, or a 4xx error that names the problem.

Runtime-independent: the TorchServe handler, the benchmark's plain handler and tests all call this, so
every serving path accepts exactly the same inputs. Accepted shapes (F = number of schema features):

    {"amount": 3.5, "hour": 2, ...}          one row by feature name
    [3.5, 2, ...]                            one row, positional in schema order
    [{...}, {...}] or [[...], [...]]         a batch of rows (either kind, may be mixed)
    {"instances": [row, row, ...]}           KServe v1 style batch

Errors are `RequestError(status, message)`: 400 for an unreadable body (empty, not UTF-8, not JSON),
413 for a batch over the row limit, 422 for readable JSON that is not valid input (missing or unknown
features, wrong types, non-finite values, wrong row length). The common path is a few Python list
operations and one `np.array` call; the slow per-value checks run only to explain an error.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["RequestError", "RequestParser", "parse_request", "body_of"]

_NUMBER_TYPES = frozenset({int, float})
_ROW_TYPES = (dict, list)


class RequestError(ValueError):
    """A request the server must refuse; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.status, "error": self.message}


def body_of(item: Any) -> Any:
    """The payload of one TorchServe request item (`{"body": ...}` or `{"data": ...}`), else the item."""
    if isinstance(item, dict):
        for key in ("body", "data"):
            if key in item and item[key] is not None:
                return item[key]
    return item


class RequestParser:
    """Parses request bodies against one feature schema; build once per model, call per request."""

    def __init__(self, features: Sequence[str], max_rows: int = 1024) -> None:
        features = list(features)
        if not features:
            raise ValueError("the feature schema is empty")
        if len(set(features)) != len(features):
            raise ValueError(f"duplicate feature names in schema: {features}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.features = features
        self.max_rows = max_rows
        self._feature_set = frozenset(features)
        self._width = len(features)

    def parse(self, body: Any) -> np.ndarray:
        """Return float32 [N, F] in schema order, or raise RequestError."""
        rows = self._rows(self._decode(body))
        values = self._positional(rows)
        return self._to_array(values)

    # -- body -> JSON value -------------------------------------------------------------------
    def _decode(self, body: Any) -> Any:
        if isinstance(body, (bytes, bytearray, memoryview)):
            raw = bytes(body)
            if not raw.strip():
                raise RequestError(400, "empty request body")
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(400, f"request body is not UTF-8 (invalid byte at offset {exc.start})") from None
        if isinstance(body, str):
            if not body.strip():
                raise RequestError(400, "empty request body")
            try:
                return json.loads(body)
            except json.JSONDecodeError as exc:
                raise RequestError(
                    400, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
                ) from None
            except RecursionError:
                raise RequestError(400, "invalid JSON: nested too deeply") from None
            except ValueError:  # an integer literal longer than int() accepts (sys.get_int_max_str_digits)
                raise RequestError(
                    422, f"a number in the body has more than {sys.get_int_max_str_digits()} digits, far beyond "
                         "the float32 range; only finite numbers are accepted"
                ) from None
        if body is None:
            raise RequestError(400, "empty request body")
        return body

    # -- JSON value -> list of rows ------------------------------------------------------------
    def _rows(self, doc: Any) -> list:
        if isinstance(doc, dict):
            if "instances" in doc and "instances" not in self._feature_set:
                extra = sorted((k for k in doc if k != "instances"), key=str)
                if extra:
                    raise RequestError(422, f"unexpected keys beside 'instances': {', '.join(map(str, extra))}")
                rows = doc["instances"]
                if not isinstance(rows, list):
                    raise RequestError(422, f"'instances' must be an array of rows, got {_json_type(rows)}")
                self._check_count(len(rows))
                for i, row in enumerate(rows):
                    if not isinstance(row, _ROW_TYPES):
                        raise RequestError(422, f"instances[{i}] must be a row (object or array), got {_json_type(row)}")
                return rows
            return [doc]
        if isinstance(doc, list):
            if not doc:
                raise RequestError(422, "empty array: no rows to predict")
            if isinstance(doc[0], _ROW_TYPES):
                self._check_count(len(doc))
                for i, row in enumerate(doc):
                    if not isinstance(row, _ROW_TYPES):
                        raise RequestError(422, f"row {i}: a batch must hold only rows (objects or arrays), got {_json_type(row)}")
                return doc
            return [doc]  # a flat array of values is one positional row
        raise RequestError(422, f"expected a JSON object or array, got {_json_type(doc)}")

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise RequestError(422, "empty batch: no rows to predict")
        if n > self.max_rows:
            raise RequestError(413, f"batch of {n} rows exceeds the limit of {self.max_rows} rows per request")

    # -- rows -> positional lists ---------------------------------------------------------------
    def _positional(self, rows: list) -> list:
        features, width, feature_set = self.features, self._width, self._feature_set
        values = []
        for i, row in enumerate(rows):
            if isinstance(row, dict):
                if row.keys() != feature_set:
                    self._raise_key_error(i, row)
                values.append([row[f] for f in features])
            else:
                if len(row) != width:
                    raise RequestError(
                        422, f"row {i}: expected {width} values in schema order ({', '.join(features)}), got {len(row)}"
                    )
                values.append(row)
        return values

    def _raise_key_error(self, i: int, row: dict) -> None:
        missing = [f for f in self.features if f not in row]
        unknown = [str(k) for k in row if k not in self._feature_set]
        parts = []
        if missing:
            parts.append(f"missing features: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown features: {', '.join(unknown)}")
        raise RequestError(422, f"row {i}: {'; '.join(parts)}")

    # -- positional lists -> float32 array ------------------------------------------------------
    def _to_array(self, values: list) -> np.ndarray:
        if not {type(v) for row in values for v in row} <= _NUMBER_TYPES:
            self._raise_type_error(values)
        try:
            wide = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer beyond float range
            self._raise_range_error(values)
        with np.errstate(over="ignore"):  # out-of-range values become inf and are reported below
            out = wide.astype(np.float32)
        finite = np.isfinite(out)
        if not finite.all():
            i, j = (int(k) for k in np.argwhere(~finite)[0])
            original = wide[i, j]
            if math.isnan(original):
                what = "NaN"
            elif math.isinf(original):
                what = "infinite"
            else:
                what = f"{original!r} is outside the float32 range"
            raise RequestError(422, f"row {i}, feature '{self.features[j]}': value is {what}; only finite numbers are accepted")
        return out

    def _raise_type_error(self, values: list) -> None:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if type(v) not in _NUMBER_TYPES:
                    raise RequestError(
                        422, f"row {i}, feature '{self.features[j]}': expected a number, got {_json_type(v)}"
                    )

    def _raise_range_error(self, values: list) -> None:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                try:
                    float(v)
                except OverflowError:
                    raise RequestError(
                        422, f"row {i}, feature '{self.features[j]}': integer is too large for a float"
                    ) from None
        raise RequestError(422, "a value is too large for a float")  # unreachable in practice


def parse_request(body: Any, features: Sequence[str], max_rows: int = 1024) -> np.ndarray:
    """One-off convenience around RequestParser (build a parser once when serving)."""
    return RequestParser(features, max_rows=max_rows).parse(body)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
