"""llama-swap's ``matrix``: named sets of models that may run together, and the solver that picks one.

A set is an expression over model names: ``a & b`` (both together), ``a | b``
(either), ``+other`` (everything the set ``other`` allows), parentheses.
``&`` binds tighter than ``|``. A name is a ``var`` (a short name for a model
id) or a model id made of letters, digits, ``_``, ``-`` and ``.``. An
expression stands for a family of model combinations that may run together;
any part of a combination may run too.

When a model is requested that is not running, :meth:`Matrix.solve` walks the
sets (a set after the sets it refers to, otherwise in file order) and, among
every combination that holds the target, picks the one whose running models
left out cost least to stop (``evict_costs``, 1 each by default); the first
found wins a tie. The running models outside it stop. A target that no set
holds runs alone. Nothing here does I/O: the scheduler's policy calls it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

__all__ = ["Matrix", "MatrixError", "Solution", "compile_matrix", "VAR_KEY"]

#: What a ``vars`` key may look like (llama-swap's rule: no ``_``, 1 to 32 characters).
VAR_KEY = re.compile(r"^[a-zA-Z0-9.-]{1,32}$")
_IDENT = re.compile(r"[\w.-]+")


class MatrixError(ValueError):
    """A matrix that cannot be compiled; the message names the set and says why."""


# -- the expression tree --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Leaf:
    model: str


@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Op:
    op: str  # "&" or "|"
    parts: tuple[_Node, ...]


_Node = Union[_Leaf, _Ref, _Op]
Combo = frozenset[str]


def _tokens(set_name: str, text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "&|()":
            out.append(ch)
            i += 1
        elif ch == "+":
            match = _IDENT.match(text, i + 1)
            if match is None:
                raise MatrixError(f"set {set_name!r}: expected a set name right after '+' at position {i}")
            out.append("+" + match.group())
            i = match.end()
        else:
            match = _IDENT.match(text, i)
            if match is None:
                raise MatrixError(f"set {set_name!r}: unexpected character {ch!r} at position {i}")
            out.append(match.group())
            i = match.end()
    return out


class _Parser:
    """expr := and ('|' and)* ; and := atom ('&' atom)* ; atom := NAME | +SET | '(' expr ')'"""

    def __init__(self, set_name: str, tokens: list[str], resolve: Mapping[str, str]) -> None:
        self.set_name = set_name
        self.tokens = tokens
        self.pos = 0
        self.resolve = resolve  # var or model id -> model id

    def parse(self) -> _Node:
        if not self.tokens:
            raise MatrixError(f"set {self.set_name!r}: the expression is empty")
        node = self.expr()
        if self.pos < len(self.tokens):
            raise MatrixError(f"set {self.set_name!r}: unexpected {self.tokens[self.pos]!r} after the expression")
        return node

    def _binary(self, op: str) -> _Node:
        sub = self.atom if op == "&" else self.conjunction
        parts = [sub()]
        while self.pos < len(self.tokens) and self.tokens[self.pos] == op:
            self.pos += 1
            parts.append(sub())
        return parts[0] if len(parts) == 1 else _Op(op, tuple(parts))

    def expr(self) -> _Node:
        return self._binary("|")

    def conjunction(self) -> _Node:
        return self._binary("&")

    def atom(self) -> _Node:
        if self.pos >= len(self.tokens):
            raise MatrixError(f"set {self.set_name!r}: the expression ends too early")
        token = self.tokens[self.pos]
        self.pos += 1
        if token == "(":
            node = self.expr()
            if self.pos >= len(self.tokens) or self.tokens[self.pos] != ")":
                raise MatrixError(f"set {self.set_name!r}: a '(' is never closed")
            self.pos += 1
            return node
        if token in "&|)":
            raise MatrixError(f"set {self.set_name!r}: unexpected {token!r}")
        if token.startswith("+"):
            return _Ref(token[1:])
        model = self.resolve.get(token)
        if model is None:
            raise MatrixError(f"set {self.set_name!r}: {token!r} is neither a var nor a model id")
        return _Leaf(model)


# -- the compiled matrix ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Solution:
    """What to stop so that ``target`` may run: ``evict``, and the set (and cost) that chose it."""

    evict: tuple[str, ...]
    set_name: str | None  # None: the target is running already, or in no set (it runs alone)
    cost: int


class Matrix:
    """Compiled sets: which models may run together, and what a swap to one of them must stop."""

    def __init__(self, sets: Mapping[str, _Node], order: Sequence[str], costs: Mapping[str, int],
                 source: Mapping[str, str]) -> None:
        self._sets = dict(sets)
        self.order = tuple(order)  # program order: a set after the sets it refers to
        self.costs = dict(costs)  # model id -> cost of stopping it (default 1)
        self.source = dict(source)  # set name -> its expression as written

    def _combos(self, node: _Node, within: Collection[str]) -> list[Combo]:
        """The maximal combinations ``node`` allows, restricted to ``within``, in the order the
        expression names them. Restricting first keeps this small: the whole cross product of
        a large set is never built."""
        if isinstance(node, _Leaf):
            return [frozenset({node.model}) if node.model in within else frozenset()]
        if isinstance(node, _Ref):
            return self._combos(self._sets[node.name], within)
        lists = [self._combos(part, within) for part in node.parts]
        if node.op == "|":
            merged = [c for part in lists for c in part]
        else:
            merged = [frozenset()]
            for part in lists:
                merged = [a | b for a in merged for b in part]
        seen: list[Combo] = []
        for combo in merged:
            if combo not in seen:
                seen.append(combo)
        return [c for c in seen if not any(c < d for d in seen)]

    def models(self, set_name: str) -> frozenset[str]:
        """Every model a set names, directly or through its references."""
        return self._leaves(self._sets[set_name])

    def _leaves(self, node: _Node) -> frozenset[str]:
        if isinstance(node, _Leaf):
            return frozenset({node.model})
        if isinstance(node, _Ref):
            return self._leaves(self._sets[node.name])
        return frozenset().union(*(self._leaves(part) for part in node.parts))

    def solve(self, target: str, running: Iterable[str]) -> Solution:
        """Which of ``running`` must stop for ``target`` to run, at the least eviction cost."""
        running = [m for m in dict.fromkeys(running) if m != target]
        if not running:
            return Solution((), None, 0)
        within = {target, *running}
        best: tuple[int, str, Combo] | None = None
        for name in self.order:
            for combo in self._combos(self._sets[name], within):
                if target not in combo:
                    continue
                cost = sum(self.costs.get(m, 1) for m in running if m not in combo)
                if best is None or cost < best[0]:
                    best = (cost, name, combo)
        if best is None:  # in no set: it runs alone
            return Solution(tuple(running), None, sum(self.costs.get(m, 1) for m in running))
        cost, name, combo = best
        return Solution(tuple(m for m in running if m not in combo), name, cost)

    def can_contain_all(self, models: Collection[str]) -> bool:
        """Whether one combination of one set holds all of ``models`` (spillover selectors need that)."""
        wanted = set(models)
        return any(wanted <= combo for name in self.order for combo in self._combos(self._sets[name], wanted))

    def sets_with(self, model: str) -> list[str]:
        """The names of the sets that name ``model``."""
        return [name for name in self.order if model in self.models(name)]


def compile_matrix(sets: Mapping[str, str], variables: Mapping[str, str], costs: Mapping[str, int],
                   model_ids: Collection[str]) -> Matrix:
    """Compile ``sets`` (name → expression); raises :class:`MatrixError` on the first mistake.

    ``variables`` map short names to model ids (a var shadows a model id of the same
    name); ``costs`` are keyed by var or model id.
    """
    if not sets:
        raise MatrixError("a matrix needs at least one set")
    names = {m: m for m in model_ids}
    for key, model in variables.items():
        if not VAR_KEY.match(key):
            raise MatrixError(f"var {key!r} must be 1 to 32 letters, digits, '-' or '.'")
        if model not in model_ids:
            raise MatrixError(f"var {key!r} names {model!r}, which is not a model id")
        names[key] = model
    model_costs: dict[str, int] = {}
    for key, cost in costs.items():
        if key not in names:
            raise MatrixError(f"evict_costs: {key!r} is neither a var nor a model id")
        if not isinstance(cost, int) or isinstance(cost, bool) or cost <= 0:
            raise MatrixError(f"evict_costs: the cost of {key!r} must be a positive whole number, not {cost!r}")
        model_costs[names[key]] = cost
    trees = {name: _Parser(name, _tokens(name, text), names).parse() for name, text in sets.items()}
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, node: _Node) -> None:
        if isinstance(node, _Ref):
            if node.name not in trees:
                raise MatrixError(f"set {name!r} refers to +{node.name}, which is not a set")
            place(node.name)
        elif isinstance(node, _Op):
            for part in node.parts:
                visit(name, part)

    def place(name: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise MatrixError(f"set {name!r} refers to itself, through +references")
        state[name] = "visiting"
        visit(name, trees[name])
        state[name] = "done"
        order.append(name)

    for name in trees:
        place(name)
    return Matrix(trees, order, model_costs, sets)
