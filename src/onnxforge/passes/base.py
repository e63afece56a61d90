"""The pass contract: a small class the manager checks from the outside.

A pass has a kebab-case `name`, a one-line `summary`, a `kind` (exact or approximate) and a frozen
`Options` dataclass whose fields are at once the Python keyword arguments, the `{key=value}` options of
a pipeline string, the CLI help and the docs. `run(state)` rewrites the model in place and returns a
`PassResult` saying whether anything changed, with statistics and a reason for every candidate it
skipped. Passes hold no state between runs: one pass object can be applied to many models.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.errors import PipelineError
from onnxforge.passes._graph import inferred_types
from onnxforge.spec import NoOptions, format_item, non_default_options, option, option_fields  # noqa: F401  (option, option_fields: re-exported for the passes)


class PassKind(str, enum.Enum):
    EXACT = "exact"  # outputs equal within float tolerance; the manager checks this
    APPROXIMATE = "approximate"  # outputs change by design; the evaluator measures the cost
    #: the output is for one backend's compiler and is not standard ONNX (e.g. int32 where the standard
    #: says int64): onnx.checker, shape inference and onnxruntime reject it, so the verifier checks no
    #: stage from it on and tag shortcuts leave it out; it belongs last, before compiling for that backend
    BACKEND_ONLY = "backend-only"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Skip:
    """A candidate the pass looked at and left alone, with the reason (a failed match is a value)."""

    target: str
    reason: str

    def __str__(self) -> str:
        return f"{self.target} skipped: {self.reason}"


@dataclass
class PassResult:
    """What a pass did. `modified` is False exactly when the model is unchanged."""

    modified: bool
    stats: dict[str, int | float | str] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def why_nothing(self) -> str:
        """One line explaining an unmodified result (the notes, else the skip reasons)."""
        if self.notes:
            return "; ".join(self.notes)
        if self.skipped:
            return "; ".join(str(s) for s in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
        return "nothing to do"


@dataclass(frozen=True)
class Snapshot:
    """A ModelState's current model at some moment (see `ModelState.snapshot`): exactly one of
    `proto` and `graph` is set."""

    proto: onnx.ModelProto | None
    graph: gs.Graph | None
    owned: bool
    ir_version: int


class ModelState:
    """The one model a pipeline works on: an onnx-graphsurgeon Graph, materialised lazily.

    The state holds either a ModelProto or a graphsurgeon Graph. Reading `graph` imports the proto (once)
    and from then on the graph is the truth; `to_model()` exports it (cached until the graph is read
    again). Passes that work on a ModelProto (onnxsim, the version converter) call `to_model()` and
    `replace()` and so never pay for a graphsurgeon round trip. Header fields graphsurgeon does not carry
    (ir_version, producer, metadata) are kept here.

    `types()` (shape/type inference of the current model) may be called at any time, before or after
    `graph` is first read: it is cached, and the cache is dropped when the graph is handed out again,
    set or replaced. A pass that rewrote the graph and wants types of the result calls
    `invalidate_types()` first (the state cannot see changes made to the graph it handed out).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._header = onnx.ModelProto()  # the fields graphsurgeon drops; never the graph (no weight copies)
        for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
            setattr(self._header, name, getattr(model, name))
        self._header.metadata_props.extend(model.metadata_props)
        self._proto: onnx.ModelProto | None = model  # read-only: passes get copies (to_model) or replace it
        self._owned = False  # whether _proto is ours (a pass's or an export's), not the caller's input
        self._graph: gs.Graph | None = None
        self._types: dict[str, tuple[int, tuple]] | None = None
        self.touched = False  # the graph was handed out since the manager reset this (before each pass) or replace()

    @property
    def graph(self) -> gs.Graph:
        """The graph to rewrite. Reading it means the cached ModelProto may go stale."""
        if self._graph is None:
            self._graph = gs.import_onnx(self._proto)  # the same model: cached types stay valid
        else:
            self._types = None  # the graph may have changed since it was last handed out
        self._proto = None
        self.touched = True
        return self._graph

    @graph.setter
    def graph(self, value: gs.Graph) -> None:
        self._graph, self._proto, self._types, self.touched = value, None, None, True

    def types(self) -> dict[str, tuple[int, tuple[int | str | None, ...]]]:
        """(ONNX element type, dims) of every tensor shape inference can name in the current model.

        See `onnxforge.passes._graph.inferred_types`. Callable in any order with `graph`: computed on
        the model as it is now (exported from the graph if one is held, without caching that export),
        cached until the graph is handed out again or the model replaced.
        """
        if self._types is None:
            if self._proto is not None:
                model = self._proto
            else:
                model = self._export()
            self._types = inferred_types(model)
        return self._types

    def invalidate_types(self) -> None:
        """Drops cached `types()` (after changing the graph in place)."""
        self._types = None

    def _export(self) -> onnx.ModelProto:
        """The graph as a ModelProto under this state's IR version: the one place IR rules are applied."""
        model = gs.export_onnx(self._graph, do_type_check=False)
        model.ir_version = self._header.ir_version
        if model.ir_version and model.ir_version < 4:
            _initializers_as_inputs(model)
        return model

    def view(self) -> onnx.ModelProto:
        """The current model as a ModelProto, not to be mutated (exported and cached if needed)."""
        if self._proto is None:
            model = self._export()
            model.producer_name = self._header.producer_name or "onnxforge"
            model.producer_version = self._header.producer_version
            model.model_version = self._header.model_version
            model.doc_string = self._header.doc_string
            model.domain = self._header.domain
            del model.metadata_props[:]
            model.metadata_props.extend(self._header.metadata_props)
            self._proto, self._owned = model, True
        return self._proto

    def snapshot(self) -> Snapshot:
        """The current model in the form the state holds it (no export), to `restore` if a pass turns
        out to have changed nothing. A held graph is referenced, not copied."""
        if self._proto is not None:
            return Snapshot(self._proto, None, self._owned, self._header.ir_version)
        return Snapshot(None, self._graph, self._owned, self._header.ir_version)

    def restore(self, snapshot: Snapshot) -> None:
        """Makes a `snapshot` the current model again: a ModelProto byte for byte (the graph is
        re-imported if read), a graph as the object it is now."""
        self._proto, self._graph, self._owned, self._header.ir_version = snapshot.proto, snapshot.graph, snapshot.owned, snapshot.ir_version
        self._types, self.touched = None, False

    @property
    def holds_graph(self) -> bool:
        """Whether the current model is the graphsurgeon graph (no up-to-date ModelProto is cached)."""
        return self._proto is None

    def to_model(self) -> onnx.ModelProto:
        """A copy of the current model as a ModelProto, free to mutate, with this state's metadata."""
        model = onnx.ModelProto()
        model.CopyFrom(self.view())
        del model.metadata_props[:]
        model.metadata_props.extend(self._header.metadata_props)
        return model

    def replace(self, model: onnx.ModelProto) -> None:
        """Makes `model` the current model (keeping this state's header fields, except ir_version)."""
        self._header.ir_version = model.ir_version
        self._proto, self._graph, self._types, self.touched, self._owned = model, None, None, False, True

    def release(self) -> onnx.ModelProto:
        """The final model with this state's metadata; the state must not be used afterwards.

        Copies only if the current model is still the caller's input."""
        model = self.view()
        if not self._owned:
            return self.to_model()
        del model.metadata_props[:]
        model.metadata_props.extend(self._header.metadata_props)
        model.ir_version = self._header.ir_version
        self._proto = self._graph = None
        return model

    def node_count(self) -> int:
        return len(self._graph.nodes) if self._graph is not None else len(self._proto.graph.node)

    @property
    def opset(self) -> int:
        """The default-domain (ai.onnx) opset of the current model."""
        if self._graph is not None:
            return int(self._graph.opset)
        return next((int(op.version) for op in self._proto.opset_import if op.domain in ("", "ai.onnx")), 0)

    def set_metadata(self, key: str, value: str) -> None:
        for prop in self._header.metadata_props:
            if prop.key == key:
                prop.value = value
                return
        self._header.metadata_props.add(key=key, value=value)

    def get_metadata(self, key: str) -> str | None:
        for prop in self._header.metadata_props:
            if prop.key == key:
                return prop.value
        return None

    def set_ir_version(self, version: int) -> None:
        self._header.ir_version = version
        if self._proto is not None and self._proto.ir_version != version:
            # keep a cached model consistent with the header; copy first: it may be the caller's input
            proto = onnx.ModelProto()
            proto.CopyFrom(self._proto)
            proto.ir_version = version
            self._proto, self._owned = proto, True


def _initializers_as_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input too (graphsurgeon drops those inputs,
    and passes add initializers): list the missing ones, typed, after the existing inputs."""
    listed = {vi.name for vi in model.graph.input}
    model.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer if t.name not in listed
    )


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    kind: ClassVar[PassKind]
    Options: ClassVar[type] = NoOptions
    #: what the pass is for beyond its kind, e.g. "ascend" (a knowledge of atc); a tag that is no pass
    #: name is also a pipeline shortcut for its exact passes (`onnxforge passes --tag ascend`)
    tags: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any | None = None, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise TypeError("give either an Options object or keyword arguments, not both")
        if options is None:
            names = {f.name for f in dataclasses.fields(self.Options)}
            unknown = sorted(set(kwargs) - names)
            if unknown:
                raise PipelineError(f"pass '{self.name}' has no option {unknown[0]!r} (options: {', '.join(sorted(names)) or 'none'})")
            options = self.Options(**kwargs)
        self.options = options
        self.validate()

    def validate(self) -> None:
        """Checks option values; raises PipelineError naming the option. Override where needed."""

    def effective_kind(self) -> PassKind:
        """The kind of this configured pass (a pass may be exact under some options only)."""
        return self.kind

    def run(self, state: ModelState) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_outputs(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What an exact pass's outputs must equal, given the previous stage's outputs.

        Identity for most passes; a pass that changes the output form on purpose (labels instead of
        logits) maps the reference through the same function.
        """
        return dict(outputs)

    def __call__(self, state: ModelState) -> PassResult:
        return self.run(state)

    def non_default_options(self) -> dict[str, Any]:
        return non_default_options(self.options)

    def __str__(self) -> str:
        return format_item(self.name, self.non_default_options())

    def __repr__(self) -> str:
        return f"<Pass {self}>"


@runtime_checkable
class NodeSelecting(Protocol):
    """A pass that can be limited to some of the nodes (or graph outputs) it would rewrite.

    What a per-node search (`report --per-node PASS`, bisect) needs from any pass, without knowing
    its options:

    - `candidates(model)`: the names this configured pass would touch in `model` (node names, or
      graph output names for output-level passes such as label-upsample), in graph order. Only
      names the pass would actually rewrite: an empty list means the pass does nothing there.
      Must not change `model`.
    - `with_nodes(names)`: a configured copy of this pass (same class, other options kept) that
      rewrites exactly the given names, a non-empty subset of `candidates(model)`; an empty
      `names` raises ValueError (an empty selection means "all" in the options).

    So ``p.with_nodes([n]).run(state)`` applies the pass to node `n` alone, and
    ``str(p.with_nodes([n]))`` is the pipeline item that does it. Implemented by resize-nearest
    (Resize nodes, `nodes=`), fp16 (nodes run in float16, `nodes=`) and label-upsample (graph
    outputs, `outputs=`); `registry.node_selecting(name)` tells whether a registered pass does.
    """

    def candidates(self, model: onnx.ModelProto) -> list[str]: ...

    def with_nodes(self, names: Sequence[str]) -> "Pass": ...

