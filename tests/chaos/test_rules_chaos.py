"""Bad input for the rule language: rules come from people (the CR, a YAML file), so no text may crash
the parser with anything but RuleError, nothing may hang it, and a rule that parses must mean the same
on the torch backend (healing Job, large batches) and the numpy one (serving) as a reference evaluator
written here from the documented semantics."""
from __future__ import annotations

import math
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from model_handler.rules import (MAX_EXPRESSION_CHARS, NUMPY, NUMPY_MAX_ROWS, TORCH, RuleError, RuleSet,
                                 compile_node, parse)

FEATURES = ["amount", "hour", "merchant_age", "is_new"]
CLASSES = ["legit", "fraud"]
# A hang detector, not a benchmark: a parse or an evaluation of a few rows takes milliseconds.
DEADLINE = timedelta(seconds=2)
CHAOS = settings(deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow])


def assert_clear(error: RuleError, text: str) -> None:
    """A clear error: a message, and a position (when given) inside the text it complains about."""
    assert error.message and str(error)
    assert error.position is None or 0 <= error.position <= len(text), (error.position, len(text))


def parse_or_error(text: str):
    try:
        tree = parse(text, FEATURES)
    except RuleError as error:
        assert_clear(error, text)
        return None
    assert tree.type in ("num", "bool")
    return tree


# ------------------------------------------------------------------------------------------ any text

GRAMMAR_CHARS = list("amounthr_gise 0123456789.eE+-*/<>=!()andortfls&|$\t\n,;\"'\\") + ["\u00e9", "\u0660", "\x00"]


@settings(CHAOS, max_examples=600)
@given(st.text(alphabet=st.sampled_from(GRAMMAR_CHARS), max_size=120) | st.text(max_size=80)
       | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
@example("\u0660 > 1")           # an Arabic-Indic digit: \d would take it, the ASCII tokenizer must not
@example("amount > 1e99999")     # a float literal beyond double range
@example("1" * 400 + " > amount")
def test_any_text_parses_or_raises_rule_error_with_a_position(text):
    parse_or_error(text)


def test_non_string_conditions_are_rule_errors():
    for value in (None, 3, 2.5, True, [], {}, b"amount > 1", ["amount > 1"]):
        with pytest.raises(RuleError, match="must be a string"):
            parse(value, FEATURES)


@pytest.mark.parametrize("text", [
    "(" * MAX_EXPRESSION_CHARS,
    "(" * 1000 + "amount > 1" + ")" * 990,
    "-" * (MAX_EXPRESSION_CHARS - 6) + "amount",
    "not " * (MAX_EXPRESSION_CHARS // 4 - 1) + "true",
    "+".join(["hour"] * (MAX_EXPRESSION_CHARS // 5)),
    " and ".join(["true"] * (MAX_EXPRESSION_CHARS // 9)),
    "abs(" * (MAX_EXPRESSION_CHARS // 4),
    "amount < " * (MAX_EXPRESSION_CHARS // 9),
    "9" * MAX_EXPRESSION_CHARS,
    "a" * MAX_EXPRESSION_CHARS,          # an unknown feature: difflib over the feature list must stay cheap
    "1e" * (MAX_EXPRESSION_CHARS // 2),
    " " * (MAX_EXPRESSION_CHARS - 1) + "$",
    "x" * (MAX_EXPRESSION_CHARS * 50),   # far over the limit: refused before tokenising
])
def test_worst_case_inputs_are_refused_or_parsed_quickly(text):
    start = time.perf_counter()
    parse_or_error(text)
    assert time.perf_counter() - start < 0.5, "a pathological expression must not take long"


# ------------------------------------------------------------------------------------------ generated rules
# An expression is a small tuple tree; `render` writes it as rule text (with random spacing and
# redundant parentheses), `reference` evaluates it per row with float32 scalars.

ARITH = ["+", "-", "*", "/"]
COMPARE = ["<", "<=", ">", ">=", "==", "!="]
NUMBERS = (st.floats(min_value=0, allow_nan=False, allow_infinity=False)
           | st.sampled_from([0.0, 0.5, 1.0, 3.0, 1e39, 3.4028235e38, 1e-45, 1e-50, 1e300]))


def number_text(value: float, style: int) -> str:
    if style == 1 and value.is_integer() and value < 1e20:
        return str(int(value))
    if style == 2:
        return f"{value:.17e}".replace("e+", "E")
    return repr(value)


def numeric_trees():
    leaf = (st.tuples(st.just("num"), NUMBERS, st.integers(0, 2))
            | st.tuples(st.just("feat"), st.integers(0, len(FEATURES) - 1)))

    def extend(inner):
        return (st.tuples(st.sampled_from(["neg", "abs", "log"]), inner)
                | st.tuples(st.just("arith"), st.sampled_from(ARITH), inner, inner))
    return st.recursive(leaf, extend, max_leaves=6)


def boolean_trees():
    leaf = (st.tuples(st.just("cmp"), st.sampled_from(COMPARE), numeric_trees(), numeric_trees())
            | st.tuples(st.just("bool"), st.booleans()))

    def extend(inner):
        return (st.tuples(st.just("not"), inner)
                | st.tuples(st.just("logic"), st.sampled_from(["and", "or"]), inner, inner))
    return st.recursive(leaf, extend, max_leaves=4)


def render(tree, draw_space) -> str:
    kind = tree[0]
    sp = draw_space
    if kind == "num":
        return number_text(tree[1], tree[2])   # literals are unsigned; negatives come from "neg"
    if kind == "feat":
        return FEATURES[tree[1]]
    if kind == "bool":
        return "true" if tree[1] else "false"
    if kind in ("abs", "log"):
        return f"{kind}({sp()}{render(tree[1], sp)}{sp()})"
    if kind == "neg":
        return f"-{sp()}({render(tree[1], sp)})"
    if kind == "not":
        return f"not ({render(tree[1], sp)})"
    op, left, right = tree[1], render(tree[2], sp), render(tree[3], sp)
    if kind == "logic":
        return f"({left}) {op} ({right})"
    return f"({sp()}{left}{sp()}){sp()}{op}{sp()}({right})"


def f32(value) -> np.float32:
    with np.errstate(all="ignore"):
        return np.float32(value)


def reference(tree, row: np.ndarray):
    """The documented semantics, one row at a time: float32 arithmetic, log NaN at <= 0 (rounded from
    float64), and a comparison with a NaN operand is false."""
    kind = tree[0]
    with np.errstate(all="ignore"):
        if kind == "num":
            return f32(tree[1])
        if kind == "feat":
            return row[tree[1]]
        if kind == "bool":
            return tree[1]
        if kind == "neg":
            return -reference(tree[1], row)
        if kind == "abs":
            return abs(reference(tree[1], row))
        if kind == "log":
            value = reference(tree[1], row)
            return f32(math.log(float(value))) if value > 0 else np.float32("nan")
        if kind == "not":
            return not reference(tree[1], row)
        a, b = reference(tree[2], row), reference(tree[3], row)
        if kind == "arith":
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[tree[1]]   # IEEE: x/0 is +-inf or NaN
        if kind == "logic":
            return (a and b) if tree[1] == "and" else (a or b)
        if np.isnan(a) or np.isnan(b):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[tree[1]]


SPECIAL = [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 3.4028235e38, -3.4028235e38, 1e-45, 2.0]
ROW_VALUES = st.floats(width=32) | st.sampled_from(SPECIAL)
ROWS = st.lists(st.lists(ROW_VALUES, min_size=4, max_size=4), min_size=1, max_size=5)


def both_backends(tree_node, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        on_numpy = np.broadcast_to(compile_node(tree_node, NUMPY)(x), (len(x),))
    on_torch = compile_node(tree_node, TORCH)(torch.from_numpy(x)).numpy()
    return on_numpy, on_torch


@settings(CHAOS, max_examples=300)
@given(boolean_trees(), ROWS, st.data())
def test_valid_rules_agree_on_torch_numpy_and_the_reference(tree, rows, data):
    spaces = st.sampled_from(["", " ", "  ", "\t"])
    text = render(tree, lambda: data.draw(spaces))
    x = np.array(rows, dtype=np.float32)
    parsed = parse(text, FEATURES)
    assert parsed.type == "bool", text
    on_numpy, on_torch = both_backends(parsed, x)
    expected = [bool(reference(tree, row)) for row in x]
    assert on_numpy.tolist() == expected, (text, x.tolist())
    assert on_torch.tolist() == expected, (text, x.tolist())
    # the public entry point, on both of its paths (numpy for small batches, torch beyond)
    rules = RuleSet.from_dicts([{"name": "r", "when": text, "label": "fraud"}], FEATURES, CLASSES)
    assert rules.fires(x)[:, 0].tolist() == expected
    big = np.tile(x, (NUMPY_MAX_ROWS // len(x) + 1, 1))
    assert rules.fires(torch.from_numpy(big))[:, 0].tolist() == expected * (len(big) // len(x))


@settings(CHAOS, max_examples=300)
@given(numeric_trees(), ROWS)
def test_numeric_subexpressions_are_bit_identical_on_both_backends(tree, rows):
    """Not only the verdicts: the values compared must be the same float32 bits, NaN where NaN."""
    text = render(tree, lambda: " ")
    x = np.array(rows, dtype=np.float32)
    on_numpy, on_torch = both_backends(parse(text, FEATURES), x)
    assert on_numpy.dtype == on_torch.dtype == np.float32
    np.testing.assert_array_equal(on_numpy, on_torch, err_msg=text)
    expected = np.array([reference(tree, row) for row in x], dtype=np.float32)
    np.testing.assert_array_equal(on_numpy, expected, err_msg=text)


@settings(CHAOS, max_examples=200)
@given(st.tuples(st.just("cmp"), st.sampled_from(COMPARE), numeric_trees(), numeric_trees()), ROWS,
       st.sampled_from([math.nan, -math.nan]))
def test_a_nan_operand_never_fires_a_comparison(comparison, rows, nan):
    """A missing value (NaN) reaching either side of any comparison, `!=` included, never fires it;
    `not` of such a comparison does. Every feature the comparison reads is NaN here."""
    text = render(comparison, lambda: " ")
    read = {leaf[1] for leaf in _leaves(comparison) if leaf[0] == "feat"}
    if not read:
        return  # a comparison of constants: no input can make it NaN
    x = np.array(rows, dtype=np.float32)
    x[:, sorted(read)] = nan
    tree = parse(text, FEATURES)
    for fired in both_backends(tree, x):
        assert not fired.any(), text
    for fired in both_backends(parse(f"not ({text})", FEATURES), x):
        assert fired.all(), text


def _leaves(tree):
    if tree[0] in ("num", "feat", "bool"):
        yield tree
    else:
        for child in tree[1:]:
            if isinstance(child, tuple):
                yield from _leaves(child)


def test_infinite_inputs_compare_as_numbers_until_they_make_a_nan():
    """inf is a number (it fires `>`), but inf - inf and 0 * inf are NaN and fire nothing."""
    x = np.array([[math.inf, 1, 0, 0], [-math.inf, 1, 0, 0]], dtype=np.float32)
    for text, expected in [("amount > 1e38", [True, False]), ("amount != 0", [True, True]),
                           ("amount - amount != 0", [False, False]), ("amount * merchant_age < 1", [False, False]),
                           ("abs(amount) == amount", [True, False]), ("log(amount) > 0", [True, False])]:
        for fired in both_backends(parse(text, FEATURES), x):
            assert fired.tolist() == expected, text


# ------------------------------------------------------------------------------------------ near-valid text

TOKENS = (FEATURES + ["amout", "sqrt", "abs", "log", "not", "and", "or", "true", "false", "(", ")", "+", "-",
                      "*", "/", "<", "<=", ">", ">=", "==", "!=", "=", "&&", "||", "!", "$", ",", "3", "1e39",
                      ".5", "1.", "1e", "0x1f", "'a'"])


@settings(CHAOS, max_examples=500)
@given(boolean_trees(), st.lists(st.tuples(st.sampled_from(["delete", "insert", "swap", "duplicate", "cut"]),
                                           st.integers(0, 10_000), st.sampled_from(TOKENS)), min_size=1, max_size=3))
def test_near_valid_rules_parse_or_fail_with_a_position(tree, mutations):
    """One to three token-level slips in a valid rule (a lost bracket, `=` for `==`, a typo'd feature,
    a truncated line) must give a RuleError that points into the text, or a well-typed tree."""
    tokens = render(tree, lambda: " ").replace("(", " ( ").replace(")", " ) ").split()
    for what, where, token in mutations:
        i = where % (len(tokens) + 1)
        if what == "delete" and tokens:
            del tokens[i % len(tokens)]
        elif what == "insert":
            tokens.insert(i, token)
        elif what == "swap" and len(tokens) > 1:
            j = (i + 1) % len(tokens)
            i %= len(tokens)
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif what == "duplicate" and tokens:
            tokens.insert(i, tokens[i % len(tokens)])
        elif what == "cut":
            tokens = tokens[:i]
    text = " ".join(tokens)
    tree_or_none = parse_or_error(text)
    if tree_or_none is not None:
        # whatever parses must also compile and run on both backends without raising
        both_backends(tree_or_none, np.zeros((2, len(FEATURES)), dtype=np.float32))


# ------------------------------------------------------------------------------------------ whole rule specs

JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
                    | st.sampled_from([10 ** 400, -(10 ** 400), "amount > 1", "fraud", "r1"])
                    | st.builds(lambda: 10 ** 5000),   # too long to repr: built lazily
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
SPEC = st.fixed_dictionaries({}, optional={"name": JUNK | st.just("r1"), "when": JUNK | st.just("amount > 1"),
                                           "label": JUNK | st.just("fraud"), "weight": JUNK,
                                           "wieght": JUNK})


@settings(CHAOS, max_examples=400)
@given(st.lists(SPEC | JUNK, max_size=3) | JUNK)
def test_any_rule_list_builds_or_raises_rule_error(rules):
    """What a CR or a rules file may hold, junk included (huge integers, nested lists, wrong types)."""
    try:
        built = RuleSet.from_dicts(rules, FEATURES, CLASSES)
    except RuleError as error:
        assert error.message and len(str(error)) < 2000, "an error message must stay readable"
        return
    assert built.fires(np.zeros((1, len(FEATURES)))).shape == (1, len(built))


@pytest.mark.parametrize("text, fragment", [
    ("rules:\n- {name: r, when: 'true', label: fraud, weight: " + "9" * 5000 + "}\n", "not valid YAML"),
    ("rules:\n- {name: r, when: 'true', label: fraud, weight: " + "9" * 400 + "}\n", "weight must be a finite"),
    ("rules:\n- {name: r, when: 'true', label: " + "7" * 500 + "}\n", "unknown label 777"),
    ("rules:\n- {name: [" + "x, " * 300 + "], when: 'true', label: fraud}\n", "needs a 'name'"),
    ("rules: &a [*a]\n", "must be a mapping"),  # a self-referencing alias
    ("rules:\n- &r {name: r, when: 'true', label: fraud}\n- *r\n", "duplicate rule name"),
    ("a: &a [1, 2]\nb: [*a, *a, *a]\n", "top-level 'rules:' list"),
    ("rules: !!python/object/apply:os.system ['true']\n", "not valid YAML"),  # safe_load: no code
])
def test_hostile_rules_files_are_rule_errors(text, fragment):
    """Regression: a huge integer weight raised OverflowError and a 5000-digit one ValueError, not RuleError."""
    with pytest.raises(RuleError) as caught:
        RuleSet.from_yaml(text, FEATURES, CLASSES)
    assert fragment in str(caught.value) and len(str(caught.value)) < 2000


# ------------------------------------------------------------------------------------------ regressions

def test_a_number_beyond_float32_is_infinite_on_both_backends():
    """Regression: `amount > 1e39` crashed the torch backend (torch.full refuses 1e39 as float32) while
    numpy treated it as inf, so a large-batch healing step failed on a rule that serving accepted."""
    x = np.array([[1.0, 0, 0, 0], [math.inf, 0, 0, 0], [3.4028235e38, 0, 0, 0]], dtype=np.float32)
    for text, expected in [("amount > 1e39", [False, False, False]), ("amount < 1e39", [True, False, True]),
                           ("-1e39 < amount", [True, True, True]), ("amount >= 3.4028235e38", [False, True, True])]:
        on_numpy, on_torch = both_backends(parse(text, FEATURES), x)
        assert on_numpy.tolist() == on_torch.tolist() == expected, text
    rules = RuleSet.from_dicts([{"name": "r", "when": "amount < 1e39", "label": "fraud"}], FEATURES, CLASSES)
    assert rules.fires(torch.ones(NUMPY_MAX_ROWS + 1, 4)).all()


def test_log_is_bit_identical_on_both_backends():
    """Regression: float32 log differed between torch and numpy in the last bit for ~4% of inputs, so
    `log(amount) > c` could fire in the healing Job and not in serving for the same row."""
    bits = np.random.default_rng(0).integers(0, 0x7F800000, size=200_000, dtype=np.uint32)
    x = np.zeros((len(bits), len(FEATURES)), dtype=np.float32)
    x[:, 0] = bits.view(np.float32)
    on_numpy, on_torch = both_backends(parse("log(amount)", FEATURES), x)
    np.testing.assert_array_equal(on_numpy, on_torch)
    exact = np.array([math.log(v) for v in x[:2000, 0].astype(np.float64)], dtype=np.float32)
    np.testing.assert_array_equal(on_numpy[:2000], exact)
