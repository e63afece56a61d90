"""The rule layer for local rewrites: a rule matches one node (or graph input/output) and rewrites it.

Modelled on onnxscript's rewriter (``RewriteRuleClassBase``, ``MatchResult.fail``), without a pattern
language: a rule is a small class with

- ``targets(ctx)``: what it looks at (default: the nodes whose op is in ``op_types``, in graph order);
- ``match(target, ctx) -> Match | Skip | None``: a typed match with its bindings, or the reason the
  target is left alone (``Skip``: reported to the user), or ``None`` for "not a candidate at all";
- ``rewrite(match, builder) -> str | None``: changes the graph through a `GraphBuilder` (opset-aware,
  unique names); returns an optional note for the pass result.

``RulePass`` (a `Pass`) runs its rules in order: each rule's targets are listed first, then each
target is matched and, on a match, rewritten at once (so a later match sees the earlier rewrites:
a chain of three Slices merges in one run); it counts the rewrites in the result's statistics under the rule's ``name`` and collects the
skips. The rewiring helpers exist once, here: `sole_consumer`, `replace_all_uses`, `take_name`, and
`GraphIORule`, the one base for "rewrite at a graph input/output" (selection by an option, unknown
names refused, the new tensor takes the old name and the old tensor's place in the graph's I/O list).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.errors import PassError
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import is_graph_output, node_label
from onnxforge.passes.base import ModelState, Pass, PassResult, Skip


@dataclass
class Match:
    """A successful match: the target's label (for messages) and what the rewrite needs.

    Rules with many bindings subclass it (a dataclass with typed fields); simple ones use `node` and
    `values` (``match["x"]`` reads ``values["x"]``).
    """

    target: str
    node: gs.Node | None = None
    tensor: gs.Tensor | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


class RuleContext:
    """What a rule sees: the graph, its opset, the pass's options and (lazily) inferred types."""

    def __init__(self, state: ModelState, graph: gs.Graph, options: Any, pass_name: str) -> None:
        self.state = state
        self.graph = graph
        self.options = options
        self.pass_name = pass_name

    @property
    def opset(self) -> int:
        return int(self.graph.opset)

    def types(self) -> dict[str, tuple[int, tuple]]:
        """(elem_type, dims) by tensor name: shape inference on the model as the pass received it (cached).

        New tensors made by earlier rewrites in this run are not in it."""
        return self.state.types()

    def dims(self, tensor: gs.Tensor, inferred_first: bool = False) -> list[int | None] | None:
        """A tensor's dims, ints where static and None where not, or None when even its rank is unknown:
        from its annotation, else shape inference (`inferred_first`: shape inference with data
        propagation first, which knows dims an exporter's or onnxsim's annotations leave symbolic)."""
        found = self.types().get(tensor.name) if inferred_first else None
        shape = found[1] if found else getattr(tensor, "shape", None)
        if shape is None and not inferred_first:
            found = self.types().get(tensor.name)
            shape = found[1] if found else None
        if shape is None:
            return None
        return [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape]


class Rule:
    """One local rewrite. Subclasses set `name` (the statistic it counts) and implement `match`/`rewrite`."""

    name: ClassVar[str]
    op_types: ClassVar[tuple[str, ...]] = ()

    def targets(self, ctx: RuleContext) -> Iterable[Any]:
        """What `match` is called on, in graph order; default: default-domain nodes of `op_types`."""
        return [n for n in ctx.graph.nodes if n.op in self.op_types and n.domain in (None, "", "ai.onnx")]

    def match(self, target: Any, ctx: RuleContext) -> Match | Skip | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def rewrite(self, match: Match, builder: GraphBuilder) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def skip(self, target: gs.Node | gs.Tensor, reason: str) -> Skip:
        """A failed match with its reason, labelled like every message about that target."""
        return Skip(node_label(target) if isinstance(target, gs.Node) else target.name, reason)


class RulePass(Pass):
    """A pass made of rules. Subclasses set the usual class attributes and implement `rules()`.

    Contract: `modified` is True exactly when some rule rewrote something; every rule's count is in
    `stats[rule.name]` (0 when nothing matched), every skip in `skipped`, every note in `notes`.
    """

    def rules(self) -> Sequence[Rule]:  # pragma: no cover - abstract
        raise NotImplementedError

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        """A note for a run in which no rule found a target at all (e.g. "no Resize nodes")."""
        return None

    def extra_stats(self, ctx: RuleContext, counts: dict[str, int], rewritten: list[str]) -> dict[str, Any]:
        """Statistics besides the per-rule counts, for a run that rewrote something. Override where needed."""
        return {}

    def run(self, state: ModelState) -> PassResult:
        graph = state.graph
        ctx = RuleContext(state, graph, self.options, self.name)
        builder = GraphBuilder(graph, self.name.replace("-", "_"))
        counts: dict[str, int] = {}
        skipped: list[Skip] = []
        notes: list[str] = []
        rewritten: list[str] = []
        seen = False
        for rule in self.rules():
            counts.setdefault(rule.name, 0)
            for target in list(rule.targets(ctx)):
                found = rule.match(target, ctx)
                if found is None:
                    continue
                seen = True
                if isinstance(found, Skip):
                    skipped.append(found)
                    continue
                note = rule.rewrite(found, builder)
                counts[rule.name] += 1
                rewritten.append(found.target)
                if note:
                    notes.append(note)
        if not rewritten:
            empty = [] if seen or skipped else [n for n in [self.nothing_to_do(ctx)] if n]
            return PassResult(False, dict(counts), skipped=skipped, notes=empty)
        stats: dict[str, Any] = dict(counts)
        stats.update(self.extra_stats(ctx, counts, rewritten))
        return PassResult(True, stats, skipped=skipped, notes=notes)


# ---------------------------------------------------------------------------------------- rewiring

def sole_consumer(graph: gs.Graph, tensor: gs.Tensor, ignore: Callable[[gs.Node], bool] | None = None) -> gs.Node | None:
    """The one node reading `tensor` (besides nodes `ignore` accepts), or None when several or none
    read it or it is a graph output (a rewrite would change what the graph returns)."""
    if is_graph_output(graph, tensor):
        return None
    readers = [n for n in tensor.outputs if not (ignore and ignore(n))]
    return readers[0] if len(readers) == 1 else None


def replace_all_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node input and graph output that is `old` becomes `new` (old keeps its producer)."""
    for consumer in list(old.outputs):
        consumer.inputs = [new if x is old else x for x in consumer.inputs]
    graph.outputs = [new if x is old else x for x in graph.outputs]


def take_name(old: gs.Tensor, new: gs.Tensor, builder: GraphBuilder, hint: str = "replaced") -> None:
    """`new` takes `old`'s name (graph inputs/outputs keep their names); `old` gets a fresh one."""
    name = old.name
    old.name = builder.name(hint)
    new.name = name


# ------------------------------------------------------------------------- rules at graph inputs/outputs

class GraphIORule(Rule):
    """A rewrite of graph inputs or outputs, selected by a tuple-of-names option of the pass.

    Subclasses set `side` and `option` (the Options field naming the selection; empty selects
    `default_selection`), implement `why_not(tensor, ctx) -> str` ("" when it applies) and
    `replace(tensor, builder) -> gs.Variable`: the tensor that takes the old one's place in the graph's
    input/output list. The base renames: the new tensor takes the old name, the old tensor gets an
    internal one. An unknown selected name is a PassError listing the names there are.
    """

    side: ClassVar[Literal["input", "output"]]
    option: ClassVar[str]
    hint: ClassVar[str] = "replaced"

    def io(self, graph: gs.Graph) -> list[gs.Tensor]:
        return list(graph.inputs if self.side == "input" else graph.outputs)

    def default_selection(self, tensors: list[gs.Tensor]) -> list[gs.Tensor]:
        """What an empty selection means: every input/output (override: argmax-output takes the first)."""
        return tensors

    def targets(self, ctx: RuleContext) -> list[gs.Tensor]:
        tensors = self.io(ctx.graph)
        wanted = tuple(getattr(ctx.options, self.option))
        if not wanted:
            return self.default_selection(tensors)
        return select(ctx.pass_name, self.side, wanted, tensors)

    def why_not(self, tensor: gs.Tensor, ctx: RuleContext) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def replace(self, tensor: gs.Tensor, builder: GraphBuilder) -> gs.Variable:  # pragma: no cover - abstract
        raise NotImplementedError

    def match(self, target: gs.Tensor, ctx: RuleContext) -> Match | Skip | None:
        reason = self.why_not(target, ctx)
        return Skip(target.name, reason) if reason else Match(target.name, tensor=target)

    def rewrite(self, match: Match, builder: GraphBuilder) -> str | None:
        old = match.tensor
        new = self.replace(old, builder)
        take_name(old, new, builder, self.hint)
        graph = builder.graph
        if self.side == "input":
            graph.inputs = [new if t is old else t for t in graph.inputs]
        else:
            graph.outputs = [new if t is old else t for t in graph.outputs]
        return None


def select(pass_name: str, what: str, wanted: Sequence[str], tensors: Sequence[Any]) -> list[Any]:
    """The items (tensors or nodes, by `.name`) a selection option names, in graph order.

    Raises:
        PassError: a name that no item has (the message names the closest ones there are, or the first few).
    """
    names = [t.name for t in tensors]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise PassError(f"{pass_name}: no graph {what} '{missing[0]}' ({_some_names(missing[0], names, what)})")
    chosen = set(wanted)
    return [t for t in tensors if t.name in chosen]


def _some_names(wanted: str, names: Sequence[str], what: str, shown: int = 8) -> str:
    """Which names there are, readably on a real graph of thousands: the closest to `wanted`, else the first few."""
    import difflib

    if not names:
        return f"the graph has no {what}s"
    close = difflib.get_close_matches(wanted, names, n=shown, cutoff=0.6)
    if close:
        return "closest: " + ", ".join(close)
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return f"{what}s: " + ", ".join(names[:shown]) + more


def replace_options(p: Pass, **changes: Any) -> Pass:
    """A copy of pass `p` with some options changed (validated like any configured pass)."""
    return type(p)(dataclasses.replace(p.options, **changes))
