"""Request parsing: every accepted shape, every refusal with its status and the name of the problem."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_handler.requests import RequestError, RequestParser, body_of, parse_request

FEATURES = ["amount", "hour", "distance"]
PARSER = RequestParser(FEATURES, max_rows=8)


def refused(body, parser=PARSER) -> RequestError:
    with pytest.raises(RequestError) as info:
        parser.parse(body)
    return info.value


# -- accepted shapes --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": 1.5, "hour": 2, "distance": -3e2}',
        '{"distance": -3e2, "hour": 2, "amount": 1.5}',  # key order is irrelevant
        bytearray(b"[1.5, 2, -300]"),
        {"amount": 1.5, "hour": 2, "distance": -300.0},  # already decoded by the runtime
        [1.5, 2, -300],
        memoryview(b'{"instances": [[1.5, 2, -300]]}'),
    ],
)
def test_one_row_in_every_shape(body):
    out = PARSER.parse(body)
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_array_equal(out, np.array([[1.5, 2.0, -300.0]], dtype=np.float32))


def test_batches_mix_named_and_positional_rows_in_schema_order():
    body = json.dumps([{"hour": 1, "amount": 10, "distance": 0.5}, [20, 2, 0.25], [30.5, 3, 0]])
    out = PARSER.parse(body)
    np.testing.assert_array_equal(out, np.array([[10, 1, 0.5], [20, 2, 0.25], [30.5, 3, 0]], dtype=np.float32))
    kserve = PARSER.parse(json.dumps({"instances": [{"amount": 1, "hour": 2, "distance": 3}, [4, 5, 6]]}))
    np.testing.assert_array_equal(kserve, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))


def test_body_of_unwraps_torchserve_request_items():
    assert body_of({"body": b"[1]"}) == b"[1]"
    assert body_of({"data": b"[2]"}) == b"[2]"
    assert body_of({"data": None, "body": b"[3]"}) == b"[3]"
    assert body_of(b"[4]") == b"[4]"


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"", b"  \n", "", None, bytearray()])
def test_empty_body_is_400(body):
    err = refused(body)
    assert err.status == 400 and "empty" in err.message


def test_invalid_json_names_the_position():
    err = refused(b'{"amount": 1,, "hour": 2}')
    assert err.status == 400
    assert "invalid JSON" in err.message and "column 14" in err.message and "char 13" in err.message


def test_non_utf8_body_is_400_with_offset():
    err = refused(b'[1, 2, \xff]')
    assert err.status == 400 and "UTF-8" in err.message and "offset 7" in err.message


def test_missing_and_unknown_features_are_named():
    err = refused({"amount": 1, "hours": 2})
    assert err.status == 422
    assert "row 0" in err.message
    assert "missing features: hour, distance" in err.message
    assert "unknown features: hours" in err.message
    err = refused([[1, 2, 3], {"amount": 1, "hour": 2}])
    assert "row 1" in err.message and "missing features: distance" in err.message and "unknown" not in err.message


@pytest.mark.parametrize(
    ("row", "feature", "got"),
    [
        ([1, "2", 3], "hour", "string '2'"),
        ([1, 2, None], "distance", "null"),
        ([True, 2, 3], "amount", "boolean"),
        ([1, [2], 3], "hour", "array"),
        ({"amount": 1, "hour": {"v": 2}, "distance": 3}, "hour", "object"),
    ],
)
def test_wrong_types_name_row_and_feature(row, feature, got):
    err = refused([[0, 0, 0], row])
    assert err.status == 422
    assert err.message == f"row 1, feature '{feature}': expected a number, got {got}"


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"[[0, 0, 0], [1, NaN, 3]]", "NaN"),  # JSON's non-standard literals
        (b"[1, 2, Infinity]", "infinite"),
        (b'{"amount": -Infinity, "hour": 0, "distance": 0}', "infinite"),
        (b"[1, 2, 1e999]", "infinite"),  # overflows while parsing
        ([1.0, float("nan"), 2.0], "NaN"),
        (b"[1, 1e300, 3]", "outside the float32 range"),
    ],
)
def test_non_finite_values_name_row_and_feature(body, what):
    err = refused(body)
    assert err.status == 422 and what in err.message and "feature '" in err.message
    assert "row 0" in err.message or "row 1" in err.message


def test_huge_integer_is_refused_not_crashing():
    err = refused("[1, 2, " + "9" * 400 + "]")
    assert err.status == 422 and "row 0, feature 'distance'" in err.message and "too large" in err.message


def test_wrong_row_length_says_expected_and_got():
    err = refused([[1, 2, 3], [1, 2]])
    assert err.status == 422
    assert "row 1: expected 3 values" in err.message and "(amount, hour, distance)" in err.message and "got 2" in err.message


def test_batch_over_limit_is_413_and_limit_is_configurable():
    rows = [[1, 2, 3]] * 9
    err = refused(rows)
    assert err.status == 413 and "9 rows" in err.message and "limit of 8" in err.message
    assert RequestParser(FEATURES, max_rows=9).parse(rows).shape == (9, 3)
    assert refused({"instances": rows}).status == 413


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"42", "got number"),
        (b'"text"', "got string"),
        (b"null", "got null"),
        (b"[]", "no rows"),
        (b'{"instances": []}', "no rows"),
        (b'{"instances": {"amount": 1}}', "'instances' must be an array"),
        (b'{"instances": [1, 2, 3]}', "instances[0] must be a row"),
        (b'{"instances": [[1, 2, 3]], "extra": 1}', "beside 'instances': extra"),
        (b"[[1, 2, 3], 4]", "row 1: a batch must hold only rows"),
    ],
)
def test_wrong_structure_is_422(body, fragment):
    err = refused(body)
    assert err.status == 422 and fragment in err.message


def test_schema_must_be_sane():
    with pytest.raises(ValueError, match="empty"):
        RequestParser([])
    with pytest.raises(ValueError, match="duplicate"):
        RequestParser(["a", "a"])
    with pytest.raises(ValueError, match="max_rows"):
        RequestParser(["a"], max_rows=0)


def test_parse_request_convenience_matches_parser():
    np.testing.assert_array_equal(parse_request(b"[1, 2, 3]", FEATURES), PARSER.parse(b"[1, 2, 3]"))


# -- speed ------------------------------------------------------------------------------------
def test_one_row_costs_microseconds():
    parser = RequestParser([f"f{i}" for i in range(30)])
    body = json.dumps({f"f{i}": i * 0.5 for i in range(30)}).encode()
    parser.parse(body)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        parser.parse(body)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 100e-6, f"{per_call * 1e6:.1f} us per 1-row request"


# -- robustness -------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_request_error(body):
    try:
        out = PARSER.parse(body)
    except RequestError as err:
        assert err.status in (400, 413, 422) and err.message
    else:
        assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 3 and np.isfinite(out).all()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FEATURES + ["x"]), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_arbitrary_json_values_only_ever_raise_request_error(doc):
    for body in (doc, json.dumps(doc)):
        try:
            out = PARSER.parse(body)
        except RequestError as err:
            assert err.status in (400, 413, 422) and err.message
        else:
            assert out.shape[1] == 3 and np.isfinite(out).all()
