"""Every condition type, condition reason and Event reason the operator can emit, read from its
source (operator/*.py) with `ast`: the `reason` of each `kopf.info/warn/event/exception` call and
the type and reason of each `set_condition_in` and `ctx.set_condition` call.

A reason written as a string literal is taken as is. One computed from something else is followed
back through the code: a conditional expression (both branches), a function parameter (its default
and every keyword value passed for it), a name or `x[0]` of a tuple assigned in the same function,
`last["result"]` (every value the module assigns to it), or a call to a function of operator/
(every string it can return, through module-level dicts). Anything else raises `Unresolved`, so a
new kind of computed reason cannot slip past tests/operator/test_operations_doc.py unseen.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
EVENT_CALLS = {"info", "warn", "event", "exception"}
# Reasons a kubelet reports, passed on to the Ready condition through readiness.condition_reason:
# the failing waiting reasons are read from readiness.FAILING_WAITING, these are the others it reads.
PASS_THROUGH = "condition_reason"
KUBELET_OTHERS = {"Error", "OOMKilled", "Unschedulable"}


class Unresolved(Exception):
    """A reason expression this module cannot follow back to string literals."""


@dataclass(frozen=True)
class Emitted:
    kind: str       # "event", "condition" (a condition's reason) or "type" (a condition type)
    value: str
    where: str      # file:line


class Source:
    def __init__(self, root: Path = OPERATOR):
        self.trees = {p: ast.parse(p.read_text(), filename=str(p)) for p in sorted(root.glob("*.py"))}
        self.functions: dict[str, ast.FunctionDef] = {}
        self.module_dicts: dict[str, ast.Dict] = {}
        self.parents: dict[ast.AST, ast.AST] = {}
        for tree in self.trees.values():
            for node in ast.walk(tree):
                for child in ast.iter_child_nodes(node):
                    self.parents[child] = node
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions[node.name] = node
            for node in tree.body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            self.module_dicts[target.id] = node.value

    def function_of(self, node: ast.AST) -> ast.FunctionDef | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        return None

    def module_of(self, node: ast.AST) -> ast.Module:
        while node in self.parents:
            node = self.parents[node]
        return node

    # ---- following an expression back to string literals ------------------------------------
    def strings(self, expr: ast.AST, scope: ast.AST | None, depth: int = 0) -> set[str]:
        if depth > 8:
            raise Unresolved(ast.unparse(expr))
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.IfExp):
            return self.strings(expr.body, scope, depth + 1) | self.strings(expr.orelse, scope, depth + 1)
        if isinstance(expr, ast.Name) and scope is not None:
            return self.name_strings(expr.id, scope, depth)
        if isinstance(expr, ast.Subscript):
            return self.subscript_strings(expr, scope, depth)
        if isinstance(expr, ast.Call):
            name = expr.func.attr if isinstance(expr.func, ast.Attribute) else getattr(expr.func, "id", None)
            if name == PASS_THROUGH:
                return self.kubelet_reasons()
            if name in self.functions:
                return self.returned_strings(self.functions[name], depth)
        raise Unresolved(ast.unparse(expr))

    def kubelet_reasons(self) -> set[str]:
        """What `condition_reason(...)` passes on from a kubelet: the waiting reasons readiness.py
        lists as failing (FAILING_WAITING), and the terminated and scheduling reasons it reads."""
        for tree in self.trees.values():
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FAILING_WAITING"
                                                        for t in node.targets):
                    return {e.value for e in ast.walk(node.value)
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)} | KUBELET_OTHERS
        raise Unresolved("FAILING_WAITING (the kubelet reasons condition_reason passes on)")

    def name_strings(self, name: str, scope: ast.AST, depth: int) -> set[str]:
        found: set[str] = set()
        args = scope.args if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        if args is not None and name in [a.arg for a in args.args + args.kwonlyargs]:
            positional = args.args[len(args.args) - len(args.defaults):]
            defaults = dict(zip([a.arg for a in positional], args.defaults))
            defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
            if name in defaults:
                found |= self.strings(defaults[name], None, depth + 1)
            for tree in self.trees.values():   # every keyword value passed for it
                for call in ast.walk(tree):
                    if isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None)) \
                            == scope.name:
                        for keyword in call.keywords:
                            if keyword.arg == name:
                                found |= self.strings(keyword.value, self.function_of(call), depth + 1)
            return found
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):   # a, b = f(...)
                for target in node.targets:
                    if isinstance(target, ast.Tuple):
                        names = [getattr(e, "id", None) for e in target.elts]
                        called = getattr(node.value.func, "id", getattr(node.value.func, "attr", None))
                        if name in names and called in self.functions:
                            found |= self.returned_strings(self.functions[called], depth, names.index(name))
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                value = node.value
                if isinstance(value, ast.Constant) and value.value is None:
                    continue
                found |= self.strings(value, scope, depth + 1)
        if not found:
            raise Unresolved(name)
        return found

    def subscript_strings(self, expr: ast.Subscript, scope: ast.AST | None, depth: int) -> set[str]:
        index = expr.slice.value if isinstance(expr.slice, ast.Constant) else None
        if isinstance(expr.value, ast.Name) and isinstance(index, int) and scope is not None:
            found = set()   # x[0] of a tuple assigned to x
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == expr.value.id
                                                        for t in node.targets) and isinstance(node.value, ast.Tuple):
                    found |= self.strings(node.value.elts[index], scope, depth + 1)
            if found:
                return found
        if isinstance(expr.value, ast.Name) and expr.value.id in self.module_dicts:
            return set().union(*(self.strings(v, None, depth + 1) for v in self.module_dicts[expr.value.id].values))
        if isinstance(index, str):   # d["key"]: every value the module assigns to ["key"] or passes as key=
            found = set()
            for node in ast.walk(self.module_of(expr)):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant) \
                                and target.slice.value == index:
                            found |= self.strings(node.value, self.function_of(node), depth + 1)
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "update":
                    for keyword in node.keywords:
                        if keyword.arg == index:
                            found |= self.strings(keyword.value, self.function_of(node), depth + 1)
            if found:
                return found
        raise Unresolved(ast.unparse(expr))

    def returned_strings(self, function: ast.FunctionDef, depth: int, index: int | None = None) -> set[str]:
        """Every string `function` can return, or, with `index`, element `index` of the tuples it
        returns."""
        found = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Return) and node.value is not None:
                value = node.value
                if index is not None:
                    if not isinstance(value, ast.Tuple):
                        raise Unresolved(f"{function.name} returns {ast.unparse(value)}, not a tuple")
                    value = value.elts[index]
                found |= self.strings(value, function, depth + 1)
        return found

    # ---- what the operator emits ------------------------------------------------------------
    def emitted(self) -> list[Emitted]:
        out = []
        for path, tree in self.trees.items():
            for call in ast.walk(tree):
                if not isinstance(call, ast.Call):
                    continue
                where = f"{path.name}:{call.lineno}"
                func = call.func
                scope = self.function_of(call)
                keywords = {k.arg: k.value for k in call.keywords}
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "kopf" \
                        and func.attr in EVENT_CALLS and "reason" in keywords:
                    out += [Emitted("event", r, where) for r in self.strings(keywords["reason"], scope)]
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                # set_condition_in(patch, status, type_, ok, reason, ...), or the pass's own
                # ctx.set_condition(type_, ok, reason, ...) (context.ModelPass)
                skip = 2 if name == "set_condition_in" else 0 if name == "set_condition" and \
                    isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "ctx" else None
                if skip is not None and len(call.args) >= skip + 1:
                    reason = call.args[skip + 2] if len(call.args) > skip + 2 else keywords.get("reason")
                    out += [Emitted("type", t, where) for t in self.strings(call.args[skip], scope)]
                    if reason is not None:
                        out += [Emitted("condition", r, where) for r in self.strings(reason, scope)]
        return out
