"""The two consoles every command writes to: results on stdout, progress and warnings on stderr."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)


def setup_logging(verbose: bool = False) -> None:
    """Library modules log through `logging`; the CLI shows warnings (or everything with --verbose)."""
    root = logging.getLogger("onnxforge")
    root.handlers[:] = [RichHandler(console=err, show_time=False, show_path=False, markup=False)]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,4,8' -> [1, 4, 8]; raises ForgeError naming `what` on anything else."""
    from onnxforge.errors import ForgeError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ForgeError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ForgeError(f"{what}: expected positive integers, got {text!r}")
    return values
