"""Bad input for the request parser: a request body is whatever a client sends, so any bytes, JSON or
decoded value must give a float32 [N, F] array or a RequestError (a 4xx naming the problem), never
another exception (a 500, and in a TorchServe batch the failure of every other request in it)."""
from __future__ import annotations

import json
import math
import sys
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from model_handler.requests import RequestError, RequestParser

FEATURES = ["amount", "hour", "distance", "is_new"]
MAX_ROWS = 16
PARSER = RequestParser(FEATURES, max_rows=MAX_ROWS)
CHAOS = settings(deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])


def parse_or_refuse(body):
    """Parse, or return the RequestError; any other exception fails the test."""
    try:
        out = PARSER.parse(body)
    except RequestError as error:
        assert error.status in (400, 413, 422), error.status
        assert error.message and error.to_dict() == {"code": error.status, "error": error.message}
        return error
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == len(FEATURES)
    assert 1 <= len(out) <= MAX_ROWS and np.isfinite(out).all()
    return out


def refused(body) -> RequestError:
    result = parse_or_refuse(body)
    assert isinstance(result, RequestError), f"accepted {body!r:.200}"
    return result


# ------------------------------------------------------------------------------------------ junk

JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
               | st.sampled_from([10 ** 30, -(10 ** 400), 1e308, 3.5e38, -1e-45, "1.5", "NaN", ""]))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (st.lists(inner, max_size=6)
                   | st.dictionaries(st.sampled_from(FEATURES + ["instances", "x", "Amount", ""]) | st.text(max_size=4),
                                     inner, max_size=6)),
    max_leaves=30)


@settings(CHAOS, max_examples=600)
@given(JSON_VALUES)
@example({"instances": [[1, 2, 3, 4]], 7: "x"})       # a decoded body with a non-string key
@example([[1, 2, 3, 4]] * (MAX_ROWS + 1))
@example({"instances": [[1, 2, 3, 4]] * 10_000})
def test_any_json_value_decoded_or_encoded_parses_or_is_refused(doc):
    parse_or_refuse(doc)
    try:
        text = json.dumps(doc)   # NaN and Infinity come out as the non-standard literals Python reads back
    except (TypeError, ValueError):
        return
    parse_or_refuse(text)
    parse_or_refuse(text.encode())


@settings(CHAOS, max_examples=600)
@given(st.binary(max_size=300))
@example(b"\xef\xbb\xbf[1, 2, 3, 4]")   # a UTF-8 byte-order mark
@example(b"[" * 100_000)                # deeper than the recursion limit
@example(b"[1, 2, 3, 4]\x00")
@example(b'{"amount": 1, "amount": 2, "hour": 3, "distance": 4, "is_new": 0}')   # duplicate key: last wins
def test_any_bytes_parse_or_are_refused(body):
    parse_or_refuse(body)
    parse_or_refuse(bytearray(body))
    parse_or_refuse(memoryview(body))


def valid_bodies():
    rows = st.lists(st.lists(st.integers(-1000, 1000), min_size=4, max_size=4), min_size=1, max_size=4)
    return rows.map(json.dumps)


@settings(CHAOS, max_examples=400)
@given(valid_bodies(), st.data())
def test_near_valid_bodies_parse_or_are_refused(text, data):
    """Byte-level slips in a valid body: cut, dropped, doubled or replaced characters."""
    raw = bytearray(text.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw)))
        what = data.draw(st.sampled_from(["cut", "drop", "double", "replace"]))
        if what == "cut":
            raw = raw[:i]
        elif what == "drop" and raw:
            del raw[i % len(raw)]
        elif what == "double" and raw:
            raw.insert(i, raw[i % len(raw)])
        elif what == "replace" and raw:
            raw[i % len(raw)] = data.draw(st.sampled_from(b'[]{},:"-.eE0123456789 \xff\x00NIa'))
    parse_or_refuse(bytes(raw))


# ------------------------------------------------------------------------------------------ valid rows

FINITE32 = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.integers(-(2 ** 24), 2 ** 24)


@settings(CHAOS, max_examples=300)
@given(st.lists(st.lists(FINITE32, min_size=4, max_size=4), min_size=1, max_size=MAX_ROWS), st.data())
def test_valid_rows_round_trip_by_name_and_by_order(rows, data):
    expected = np.array(rows, dtype=np.float64).astype(np.float32)
    by_order = rows
    by_name = []
    for row in rows:
        keys = data.draw(st.permutations(FEATURES))          # key order never matters
        by_name.append({k: row[FEATURES.index(k)] for k in keys})
    mixed = [by_name[i] if data.draw(st.booleans()) else rows[i] for i in range(len(rows))]
    bodies = [by_order, by_name, mixed, {"instances": by_order}, {"instances": by_name}]
    if len(rows) == 1:
        bodies += [rows[0], by_name[0]]                       # a single row without a batch around it
    for body in bodies:
        for form in (body, json.dumps(body), json.dumps(body).encode()):
            out = PARSER.parse(form)
            np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------------------ named problems

@settings(CHAOS, max_examples=200)
@given(st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=1, max_size=5), st.data())
def test_a_wrong_row_length_names_the_row_and_both_lengths(rows, data):
    i = data.draw(st.integers(0, len(rows) - 1))
    length = data.draw(st.integers(0, 12).filter(lambda n: n != 4))
    rows[i] = [1] * length
    if len(rows) == 1 and length == 0:
        return  # `[[]]` is a batch of one empty row, `[]` an empty batch: both refused, worded apart
    error = refused(rows)
    assert error.status == 422 and f"row {i}: expected 4 values" in error.message and f"got {length}" in error.message


@settings(CHAOS, max_examples=200)
@given(st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=1, max_size=5), st.data(),
       st.text(min_size=1, max_size=12).filter(lambda k: k not in FEATURES))
def test_unknown_and_missing_names_are_listed(rows, data, unknown):
    i = data.draw(st.integers(0, len(rows) - 1))
    dropped = data.draw(st.sampled_from(FEATURES))
    named = [dict(zip(FEATURES, row)) for row in rows]
    del named[i][dropped]
    named[i][unknown] = 1
    error = refused(json.dumps(named).encode())
    assert error.status == 422 and error.message.startswith(f"row {i}: ")
    assert f"missing features: {dropped}" in error.message and f"unknown features: {unknown}" in error.message


BAD_VALUES = [
    (math.nan, "NaN"), (math.inf, "infinite"), (-math.inf, "infinite"), (1e39, "outside the float32 range"),
    (-3.5e38, "outside the float32 range"), (10 ** 400, "too large"), (True, "got boolean"), (None, "got null"),
    ("3", "got string"), ([3], "got array"), ({"v": 3}, "got object"),
]


@settings(CHAOS, max_examples=300)
@given(st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=1, max_size=5), st.data(),
       st.sampled_from(BAD_VALUES), st.booleans())
def test_a_bad_value_names_its_row_and_feature(rows, data, bad, by_name):
    """NaN, inf, beyond float32, huge integers, wrong types: the error says where, in both row forms."""
    value, what = bad
    i, j = data.draw(st.integers(0, len(rows) - 1)), data.draw(st.integers(0, 3))
    rows[i][j] = value
    body = [dict(zip(FEATURES, row)) for row in rows] if by_name else rows
    if isinstance(value, (list, dict)) and not by_name and i == 0 and len(rows) == 1:
        return  # the only row holding an array is read as a batch of rows; covered by the junk tests
    for form in (body, json.dumps(body).encode()):
        error = refused(form)
        assert error.status == 422 and f"row {i}, feature '{FEATURES[j]}'" in error.message, error.message
        assert what in error.message


@pytest.mark.parametrize("digits", [sys.get_int_max_str_digits() + 1, 20_000])
@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_too_long_for_python_is_a_422_not_a_crash(digits, sign):
    """Regression: json.loads raises a plain ValueError (not JSONDecodeError) for an integer with more
    digits than int() accepts; it escaped the parser and failed the whole TorchServe batch."""
    body = f'[1, 2, 3, {sign}{"9" * digits}]'
    for form in (body, body.encode()):
        error = refused(form)
        assert error.status == 422 and "digits" in error.message and "finite" in error.message


def test_a_decoded_body_with_non_string_keys_is_refused_cleanly():
    """Regression: sorting the keys beside 'instances' raised TypeError when they were not all strings."""
    error = refused({"instances": [[1, 2, 3, 4]], 7: "x", "y": 1})
    assert error.status == 422 and "beside 'instances': 7, y" in error.message
