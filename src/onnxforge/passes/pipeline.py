"""Pipeline strings: `simplify,resize-nearest{nodes=up1|up2},fp16-output`.

Grammar: `onnxforge.spec` (comma-separated `name{key=value,...}` items; list values are '|'-separated).
Values are converted to the type of the option's dataclass field (int, float, bool, str, tuple of
str, or a Literal choice). Errors name the column of the bad token and, for unknown names, the known
ones. `str(Pipeline)` prints the canonical form (only non-default options, in declaration order), and
parsing the canonical form gives the same pipeline.

A tag that is not a pass name is a shortcut for the exact passes carrying it, in catalogue order:
`simplify,ascend,target-opset` expands `ascend` to the Ascend knowledges. The canonical form (and so the
pipeline stored in a model's metadata) lists the expanded passes; a shortcut takes no options.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxforge import spec
from onnxforge.errors import PipelineError
from onnxforge.passes.base import Pass
from onnxforge.spec import describe_type, format_item, format_value  # noqa: F401  (public here since wave one)

GRAMMAR = spec.Grammar(
    what="pipeline", item="a pass name", error=PipelineError,
    empty="empty pipeline: give comma-separated pass names (see 'onnxforge passes')",
)


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of configured passes."""

    passes: tuple[Pass, ...]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __iter__(self):
        return iter(self.passes)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        return parse_pipeline(text)


def parse_pipeline(text: str) -> Pipeline:
    """Parses a pipeline string into configured passes; raises PipelineError pointing at the bad token."""
    from onnxforge.passes.registry import all_passes, shortcut

    registry = all_passes()
    passes = []
    for item in spec.parse_items(text, GRAMMAR):
        cls = registry.get(item.name)
        expanded = shortcut(item.name) if cls is None else None
        if expanded is not None:
            if item.options:
                raise GRAMMAR.fail(text, item.column, f"'{item.name}' is a shortcut for {','.join(expanded)} and takes no options")
            passes.extend(registry[n]() for n in expanded)
            continue
        if cls is None:
            raise GRAMMAR.fail(text, item.column, f"unknown pass '{item.name}'; known passes: {', '.join(registry)}")
        kwargs = spec.item_kwargs(item, cls.Options, text, GRAMMAR, f"pass '{item.name}'")
        try:
            passes.append(cls(**kwargs))
        except PipelineError as exc:
            raise GRAMMAR.fail(text, item.column, str(exc)) from None
    return Pipeline(tuple(passes))


def option_docs(cls: type[Pass]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each option of a pass class."""
    return spec.option_rows(cls.Options)
