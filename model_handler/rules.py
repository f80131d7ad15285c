"""The symbolic rule language: analyst rules such as `amount > 1000 and merchant_age < 30 -> fraud`.

Rules come from the custom resource, i.e. from people, so they are parsed by a small hand-written
recursive-descent parser and never `eval`-ed. Type errors (`amount and 3`) and unknown names are
caught at parse time with the character position, because the operator reports them in the CR status
where nobody can attach a debugger. Each rule compiles once into vectorised ops, so
`RuleSet.fires(x)` is one pass over a batch with no Python loop over rows: the handler calls it on
every request batch and the healing Job on every training step. There are two compiled forms with
the same float32 semantics: torch ops (large batches, any device) and numpy ops (CPU batches up to
`NUMPY_MAX_ROWS` rows, where a numpy ufunc costs about a microsecond and a torch op ten). Parsing,
hashing and `fires_array` need numpy only: torch is imported on the first torch evaluation (or
`labels`/`weights`), so the operator, which parses and scores rules, never loads it.

Grammar, lowest precedence first (comparisons do not chain):
    or  <  and  <  not  <  (< <= > >= == !=)  <  (+ -)  <  (* /)  <  unary -  <  atom
    atom := number | feature | true | false | abs(e) | log(e) | ( e )
Arithmetic is IEEE float32: division by zero gives inf/nan, `log(e)` is NaN for e <= 0, and any
comparison with a NaN operand is false (`!=` included), so a missing value never fires a rule.
A number beyond the float32 range (`1e39`) is inf; `log` is computed in float64 and rounded once,
so the torch and numpy forms agree bit for bit.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

MAX_EXPRESSION_CHARS = 2000
MAX_NESTING = 50          # parentheses, `not`, unary minus and function calls, nested
MAX_TREE_DEPTH = 200      # height of the parsed tree (long `a + b + c ...` chains)
NUMPY_MAX_ROWS = 4096     # `fires` evaluates CPU batches up to this size with numpy, larger ones with torch
RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
RULE_KEYS = ("name", "when", "label", "weight", "kind")
# `definition`: holds by definition whatever the traffic does (trusted even when its inputs moved);
# `heuristic` (the default): an analyst's rule of thumb, trusted as far as the evidence agrees.
RULE_KINDS = ("heuristic", "definition")
KEYWORDS = {"and", "or", "not", "true", "false"}
FUNCTIONS = {"abs", "log"}


class RuleError(ValueError):
    """A rule that cannot be used; `.rule` is its name, `.position` a 0-based offset in `when`."""

    def __init__(self, message: str, rule: str | None = None, position: int | None = None,
                 detail: str | None = None):
        self.message, self.rule, self.position, self.detail = message, rule, position, detail
        prefix = f"rule {rule!r}: " if rule is not None else ""
        where = f" at position {position}" if position is not None else ""
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{prefix}{message}{where}{suffix}")

    def for_rule(self, rule: str) -> RuleError:
        return RuleError(self.message, rule, self.position, self.detail)


# ---------------------------------------------------------------------------------------------
# Tokens

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/)
  | (?P<lparen>\()
  | (?P<rparen>\))
""", re.VERBOSE | re.ASCII)
OPERATOR_HINTS = {"=": "'=='", "&&": "'and'", "&": "'and'", "||": "'or'", "|": "'or'", "!": "'not'"}


@dataclass(frozen=True)
class Token:
    kind: str      # number, name, op, lparen, rparen, end
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            two, one = text[position:position + 2], text[position]
            hint = OPERATOR_HINTS.get(two) or OPERATOR_HINTS.get(one)
            bad = two if two in OPERATOR_HINTS else one
            message = f"unexpected character {bad!r}" + (f"; use {hint}" if hint else "")
            raise RuleError(message, position=position)
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup, match.group(), position))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# ---------------------------------------------------------------------------------------------
# Syntax tree: every node knows its type ("num" or "bool") and where it starts.

@dataclass(frozen=True)
class Node:
    kind: str                  # number, feature, bool, neg, abs, log, arith, compare, not, logic
    type: str                  # "num" or "bool"
    position: int
    value: object = None       # number value, feature index, bool value, or operator text
    children: tuple = ()
    depth: int = 1

    def canonical(self, features: Sequence[str]) -> str:
        """Fully parenthesised text: the same for every spacing of the same expression."""
        if self.kind == "number":
            return repr(float(self.value))
        if self.kind == "feature":
            return features[self.value]
        if self.kind == "bool":
            return "true" if self.value else "false"
        parts = [c.canonical(features) for c in self.children]
        if self.kind in ("abs", "log"):
            return f"{self.kind}({parts[0]})"
        if self.kind == "neg":
            return f"(-{parts[0]})"
        if self.kind == "not":
            return f"(not {parts[0]})"
        return f"({parts[0]} {self.value} {parts[1]})"


def _node(kind: str, type_: str, position: int, value=None, children: tuple = ()) -> Node:
    depth = 1 + max((c.depth for c in children), default=0)
    if depth > MAX_TREE_DEPTH:
        raise RuleError(f"expression too deep (more than {MAX_TREE_DEPTH} levels)", position=position)
    return Node(kind, type_, position, value, children, depth)


class Parser:
    """Recursive descent over the token list; one method per precedence level."""

    def __init__(self, text: str, features: Sequence[str]):
        if not isinstance(text, str):
            raise RuleError(f"'when' must be a string, got {type(text).__name__}")
        if not text.strip():
            raise RuleError("empty expression", position=0)
        if len(text) > MAX_EXPRESSION_CHARS:
            raise RuleError(f"expression too long ({len(text)} characters, limit {MAX_EXPRESSION_CHARS})")
        self.tokens, self.index, self.nesting = tokenize(text), 0, 0
        self.features = {name: i for i, name in enumerate(features)}
        self.feature_names = list(features)

    def parse(self) -> Node:
        node = self.parse_or()
        token = self.peek()
        if token.kind == "rparen":
            raise RuleError("unbalanced ')'", position=token.position)
        if token.kind != "end":
            raise RuleError(f"unexpected {token.text!r} after a complete expression", position=token.position)
        return node

    # helpers
    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "name" and token.text == word

    def enter(self, position: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise RuleError(f"expression nested too deeply (limit {MAX_NESTING})", position=position)

    @staticmethod
    def expect(node: Node, type_: str, what: str) -> Node:
        if node.type != type_:
            wanted = "a number" if type_ == "num" else "a condition (true/false)"
            got = "a condition" if node.type == "bool" else "a number"
            raise RuleError(f"{what} needs {wanted}, got {got}", position=node.position)
        return node

    # precedence levels
    def parse_or(self) -> Node:
        return self.parse_logic("or", self.parse_and)

    def parse_and(self) -> Node:
        return self.parse_logic("and", self.parse_not)

    def parse_logic(self, word: str, operand: Callable[[], Node]) -> Node:
        left = operand()
        while self.at_keyword(word):
            self.advance()
            right = operand()
            self.expect(left, "bool", f"'{word}'")
            self.expect(right, "bool", f"'{word}'")
            left = _node("logic", "bool", left.position, word, (left, right))
        return left

    def parse_not(self) -> Node:
        if self.at_keyword("not"):
            token = self.advance()
            self.enter(token.position)
            operand = self.expect(self.parse_not(), "bool", "'not'")
            self.nesting -= 1
            return _node("not", "bool", token.position, None, (operand,))
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_sum()
        token = self.peek()
        if token.kind == "op" and token.text in ("<", "<=", ">", ">=", "==", "!="):
            self.advance()
            right = self.parse_sum()
            self.expect(left, "num", f"comparison {token.text!r}")
            self.expect(right, "num", f"comparison {token.text!r}")
            after = self.peek()
            if after.kind == "op" and after.text in ("<", "<=", ">", ">=", "==", "!="):
                raise RuleError("comparisons cannot be chained; join them with 'and'", position=after.position)
            return _node("compare", "bool", left.position, token.text, (left, right))
        return left

    def parse_sum(self) -> Node:
        return self.parse_arith(("+", "-"), self.parse_product)

    def parse_product(self) -> Node:
        return self.parse_arith(("*", "/"), self.parse_unary)

    def parse_arith(self, ops: tuple[str, ...], operand: Callable[[], Node]) -> Node:
        left = operand()
        while self.peek().kind == "op" and self.peek().text in ops:
            op = self.advance().text
            right = operand()
            self.expect(left, "num", f"{op!r}")
            self.expect(right, "num", f"{op!r}")
            left = _node("arith", "num", left.position, op, (left, right))
        return left

    def parse_unary(self) -> Node:
        token = self.peek()
        if token.kind == "op" and token.text == "-":
            self.advance()
            self.enter(token.position)
            operand = self.expect(self.parse_unary(), "num", "unary '-'")
            self.nesting -= 1
            return _node("neg", "num", token.position, None, (operand,))
        return self.parse_atom()

    def parse_atom(self) -> Node:
        token = self.advance()
        if token.kind == "number":
            return _node("number", "num", token.position, float(token.text))
        if token.kind == "lparen":
            self.enter(token.position)
            inner = self.parse_or()
            closing = self.advance()
            if closing.kind != "rparen":
                raise RuleError(f"unbalanced '(': expected ')' but found {self.describe(closing)}",
                                position=token.position if closing.kind == "end" else closing.position)
            self.nesting -= 1
            return inner
        if token.kind == "name":
            if token.text in ("true", "false"):
                return _node("bool", "bool", token.position, token.text == "true")
            if token.text in KEYWORDS:
                raise RuleError(f"expected a value but found keyword {token.text!r}", position=token.position)
            if self.peek().kind == "lparen":
                return self.parse_call(token)
            return self.feature(token)
        raise RuleError(f"expected a value but found {self.describe(token)}", position=token.position)

    def parse_call(self, name: Token) -> Node:
        if name.text not in FUNCTIONS:
            raise RuleError(f"unknown function {name.text!r}", position=name.position,
                            detail=f"available: {', '.join(sorted(FUNCTIONS))}")
        opening = self.advance()
        self.enter(opening.position)
        argument = self.expect(self.parse_or(), "num", f"{name.text}()")
        closing = self.advance()
        if closing.kind != "rparen":
            raise RuleError(f"{name.text}() takes one argument; expected ')' but found {self.describe(closing)}",
                            position=opening.position if closing.kind == "end" else closing.position)
        self.nesting -= 1
        return _node(name.text, "num", name.position, None, (argument,))

    def feature(self, token: Token) -> Node:
        if token.text in self.features:
            return _node("feature", "num", token.position, self.features[token.text])
        close = difflib.get_close_matches(token.text, self.feature_names, n=1)
        known = ", ".join(self.feature_names[:12]) + (", ..." if len(self.feature_names) > 12 else "")
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RuleError(f"unknown feature {token.text!r}", position=token.position, detail=f"{hint}known: {known}")

    @staticmethod
    def describe(token: Token) -> str:
        return "the end of the expression" if token.kind == "end" else repr(token.text)


def parse(text: str, features: Sequence[str]) -> Node:
    """Parse `text`; raise RuleError unless it is a well-typed expression over `features`."""
    parser = Parser(text, features)
    try:
        return parser.parse()
    except RecursionError:    # the nesting limits keep well below it; this guards a deep caller stack
        raise RuleError(f"expression nested too deeply (limit {MAX_NESTING})") from None


# ---------------------------------------------------------------------------------------------
# Compilation: a tree of closures, each mapping x [N, F] float32 to a [N] tensor.

@dataclass(frozen=True)
class Backend:
    """The array operations one compiler needs, for torch or numpy: the same tree of closures
    evaluates rules either way (numpy is far cheaper for the handful of rows of one request)."""

    constant: Callable            # (value, x) -> a [N] array, or a scalar the ops broadcast
    log: Callable                 # natural log, NaN for values <= 0
    neg: Callable
    abs: Callable
    logical_not: Callable
    logical_and: Callable
    logical_or: Callable
    arithmetic: dict
    comparisons: dict             # all but "!=", which is built from < and > (false for any NaN)


def _torch_log(value):
    import torch
    # float32 log is not correctly rounded and torch's differs from numpy's in the last bit for a
    # few percent of inputs; log in float64, rounded once to float32, is the same in both.
    logged = torch.log(value.to(torch.float64)).to(value.dtype)
    return torch.where(value > 0, logged, torch.full_like(value, math.nan))


def _numpy_log(value):
    logged = np.log(np.asarray(value, dtype=np.float64)).astype(np.float32)
    return np.where(value > 0, logged, np.float32(math.nan))


def _numpy_constant(value, x):
    if isinstance(value, bool):
        return np.bool_(value)
    with np.errstate(over="ignore"):
        return np.float32(value)


@functools.cache
def torch_backend() -> Backend:
    """The torch ops, built (and torch imported) on first use."""
    import torch
    return Backend(
        constant=lambda value, x: torch.full((x.shape[0],), value,
                                             dtype=torch.bool if isinstance(value, bool) else x.dtype,
                                             device=x.device),
        log=_torch_log, neg=torch.neg, abs=torch.abs, logical_not=torch.logical_not,
        logical_and=torch.logical_and, logical_or=torch.logical_or,
        arithmetic={"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div},
        comparisons={"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq})


def __getattr__(name: str):
    """`rules.TORCH`, the torch backend, built on first access (PEP 562): importing this module
    never imports torch."""
    if name == "TORCH":
        return torch_backend()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


NUMPY = Backend(
    constant=_numpy_constant,
    log=_numpy_log,
    neg=np.negative, abs=np.abs, logical_not=np.logical_not,
    logical_and=np.logical_and, logical_or=np.logical_or,
    arithmetic={"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide},
    comparisons={"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal})


def _float32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def compile_node(node: Node, ops: Backend | None = None) -> Callable:
    """A closure mapping x [N, F] float32 to the node's [N] value (numpy may return a scalar for a
    constant subtree; the caller broadcasts). Under numpy, call it inside
    `np.errstate(all="ignore")`: IEEE results (inf, NaN), no warnings. `ops` None: torch."""
    ops = ops if ops is not None else torch_backend()
    kind = node.kind
    if kind in ("number", "bool"):
        # a number is rounded to float32 once, here: beyond its range it is +-inf on both backends
        # (torch.full refuses a Python float it cannot represent, e.g. `amount > 1e39`)
        value = bool(node.value) if kind == "bool" else _float32(node.value)
        return lambda x: ops.constant(value, x)
    if kind == "feature":
        column = node.value
        return lambda x: x[:, column]
    children = [compile_node(c, ops) for c in node.children]
    if kind in ("neg", "abs", "log", "not"):
        unary = {"neg": ops.neg, "abs": ops.abs, "log": ops.log, "not": ops.logical_not}[kind]
        return lambda x: unary(children[0](x))
    left, right = children
    if kind == "arith":
        op = ops.arithmetic[node.value]
    elif kind == "logic":
        op = ops.logical_and if node.value == "and" else ops.logical_or
    elif node.value == "!=":
        # both libraries say nan != 1; the language says a comparison with NaN never fires
        def op(a, b):
            return ops.logical_or(ops.comparisons["<"](a, b), ops.comparisons[">"](a, b))
    else:
        op = ops.comparisons[node.value]
    return lambda x: op(left(x), right(x))


def _features_read(node: Node) -> set[int]:
    found = {node.value} if node.kind == "feature" else set()
    for child in node.children:
        found |= _features_read(child)
    return found


# ---------------------------------------------------------------------------------------------
# Rules and rule sets

@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    label: str
    weight: float
    features: frozenset[str]
    kind: str = "heuristic"


class RuleSet:
    """Validated, compiled rules over a fixed feature order and class list."""

    def __init__(self, rules: Sequence[Rule], trees: Sequence[Node], features: Sequence[str],
                 classes: Sequence[str]):
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.features, self.classes = list(features), list(classes)
        self._trees = tuple(trees)
        self._compiled_numpy = [compile_node(tree, NUMPY) for tree in trees]
        self.label_index = np.array([self.classes.index(r.label) for r in self.rules], dtype=np.int64)
        self.weight_array = np.array([r.weight for r in self.rules], dtype=np.float32)
        self.definitions = np.array([r.kind == "definition" for r in self.rules], dtype=bool)
        self.feature_index = [sorted(_features_read(tree)) for tree in trees]

    @classmethod
    def from_dicts(cls, rules: list[dict], features: Sequence[str], classes: Sequence[str]) -> RuleSet:
        features, classes = _names(features, "features"), _names(classes, "classes")
        if isinstance(rules, dict) or not isinstance(rules, (list, tuple)):
            raise RuleError(f"rules must be a list of mappings, got {type(rules).__name__}")
        parsed, trees, seen = [], [], set()
        for i, spec in enumerate(rules):
            rule, tree = _parse_rule(spec, i, features, classes)
            if rule.name in seen:
                raise RuleError(f"duplicate rule name (rule #{i + 1})", rule=rule.name)
            seen.add(rule.name)
            parsed.append(rule)
            trees.append(tree)
        return cls(parsed, trees, features, classes)

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike, features: Sequence[str],
                  classes: Sequence[str]) -> RuleSet:
        text = _read_yaml_source(text_or_path)
        try:
            document = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer too long for int()
            raise RuleError(f"rules file is not valid YAML: {error}") from None
        if not isinstance(document, dict) or "rules" not in document:
            raise RuleError("rules file must be a mapping with a top-level 'rules:' list")
        extra = sorted(set(document) - {"rules"}, key=str)
        if extra:
            raise RuleError(f"rules file has unknown top-level keys {extra}; only 'rules' is allowed")
        return cls.from_dicts(document["rules"] or [], features, classes)

    def __len__(self) -> int:
        return len(self.rules)

    # The torch side, built on first use (the operator never uses it, so never imports torch).
    @functools.cached_property
    def _compiled(self) -> list[Callable]:
        return [compile_node(tree, torch_backend()) for tree in self._trees]

    @functools.cached_property
    def labels(self):
        """[R] torch.long: each rule's class index (`label_index` as numpy)."""
        import torch
        return torch.from_numpy(self.label_index.copy())

    @functools.cached_property
    def weights(self):
        """[R] torch.float32: each rule's weight (`weight_array` as numpy)."""
        import torch
        return torch.from_numpy(self.weight_array.copy())

    def fires(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[N, R] bool: which rules fire on which rows (on x's device)."""
        import torch
        if isinstance(x, np.ndarray) and len(x) <= NUMPY_MAX_ROWS:
            return torch.from_numpy(self.fires_array(x))
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.ndim > 0 and len(x) <= NUMPY_MAX_ROWS:
            return torch.from_numpy(self.fires_array(x.detach().to(torch.float32).numpy()))
        x = self._as_matrix(x)
        with torch.no_grad():
            if not self._compiled:
                return torch.zeros((x.shape[0], 0), dtype=torch.bool, device=x.device)
            return torch.stack([rule(x) for rule in self._compiled], dim=1)

    def fires_array(self, x: np.ndarray) -> np.ndarray:
        """[N, R] bool numpy array: `fires` evaluated with numpy (the serving path: no torch at all)."""
        x = self._as_array(x)
        fired = np.empty((x.shape[0], len(self._compiled_numpy)), dtype=np.bool_)
        with np.errstate(all="ignore"):
            for column, rule in enumerate(self._compiled_numpy):
                fired[:, column] = rule(x)   # a constant rule's scalar broadcasts down the column
        return fired

    def to_dicts(self) -> list[dict]:
        return [{"name": r.name, "when": r.when, "label": r.label, "weight": r.weight,
                 **({"kind": r.kind} if r.kind != "heuristic" else {})} for r in self.rules]

    def hash(self) -> str:
        """sha256 of the rules in canonical form: spacing and redundant parentheses do not count."""
        canonical = [{"name": r.name, "when": tree.canonical(self.features), "label": r.label,
                      "weight": r.weight, **({"kind": r.kind} if r.kind != "heuristic" else {})}
                     for r, tree in zip(self.rules, self._trees)]
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def _as_array(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"rule input must be a numpy array here, got {type(x).__name__}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"rule input must be numeric, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"rule input must have shape [N, {len(self.features)}] "
                             f"(features: {', '.join(self.features)}), got {list(x.shape)}")
        return x.astype(np.float32, copy=False)

    def _as_matrix(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        import torch
        if isinstance(x, np.ndarray):
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise ValueError(f"rule input must be numeric, got dtype {x.dtype}")
            x = torch.from_numpy(np.asarray(x, dtype=np.float32))
        elif isinstance(x, torch.Tensor):
            x = x.detach().to(torch.float32)
        else:
            raise TypeError(f"rule input must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"rule input must have shape [N, {len(self.features)}] "
                             f"(features: {', '.join(self.features)}), got {list(x.shape)}")
        return x


def _names(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
        raise RuleError(f"{what} must be a list of non-empty strings")
    values = list(values)
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise RuleError(f"{what} has duplicates: {duplicates}")
    return values


def _parse_rule(spec: object, index: int, features: list[str], classes: list[str]) -> tuple[Rule, Node]:
    if not isinstance(spec, dict):
        raise RuleError(f"rule #{index + 1} must be a mapping with keys {list(RULE_KEYS)}, "
                        f"got {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        raise RuleError(f"rule #{index + 1} needs a 'name' of letters, digits, '_', '.', '-' "
                        f"(at most 63, starting with a letter or digit), got {_shown(name)}")
    unknown = sorted(set(spec) - set(RULE_KEYS), key=str)
    if unknown:
        raise RuleError(f"unknown keys {unknown} (allowed: {', '.join(RULE_KEYS)})", rule=name)
    if "when" not in spec:
        raise RuleError("missing 'when'", rule=name)
    try:
        tree = parse(spec["when"], features)
    except RuleError as error:
        raise error.for_rule(name) from None
    if tree.type != "bool":
        raise RuleError("'when' must be a condition (a comparison, true/false, and/or/not), "
                        "not a number", rule=name, position=tree.position)
    label = spec.get("label")
    if label not in classes:
        raise RuleError(f"unknown label {_shown(label)} (classes: {', '.join(classes)})", rule=name)
    weight = spec.get("weight", 1.0)
    try:
        valid = not isinstance(weight, bool) and isinstance(weight, (int, float)) and math.isfinite(weight) \
            and weight > 0
    except OverflowError:  # an integer beyond the float range
        valid = False
    if not valid:
        raise RuleError(f"weight must be a finite number > 0, got {_shown(weight)}", rule=name)
    kind = spec.get("kind", "heuristic")
    if kind not in RULE_KINDS:
        raise RuleError(f"kind must be one of {', '.join(RULE_KINDS)}, got {_shown(kind)}", rule=name)
    features_read = frozenset(features[i] for i in _features_read(tree))
    return Rule(name, spec["when"], label, float(weight), features_read, kind), tree


def _shown(value: object, limit: int = 80) -> str:
    """repr for an error message: cut short, and never failing (repr of a huge int raises)."""
    try:
        text = repr(value)
    except ValueError:  # holds an int with more digits than sys.get_int_max_str_digits()
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_yaml_source(text_or_path: str | os.PathLike) -> str:
    if isinstance(text_or_path, os.PathLike):
        return Path(text_or_path).read_text()
    if not isinstance(text_or_path, str):
        raise RuleError(f"from_yaml needs YAML text or a path, got {type(text_or_path).__name__}")
    if "\n" not in text_or_path:
        if os.path.isfile(text_or_path):
            return Path(text_or_path).read_text()
        if text_or_path.strip().endswith((".yaml", ".yml")):
            raise RuleError(f"rules file {text_or_path!r} does not exist")
    return text_or_path
