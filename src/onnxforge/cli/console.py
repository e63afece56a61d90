"""The two consoles every command writes to (results on stdout, progress and warnings on stderr), and the
helpers that make output work outside a terminal.

Contract:
- **Tables** (`Output.table`): a rich table on a terminal; when stdout is not a terminal (CI logs, `| tee`,
  a pipe) plain aligned text with one line per row, never folded to 80 columns. `--format md` prints a
  markdown table, `--format json` prints the data (or the table's rows as a list of objects).
- **Options** every table-printing command can declare the same way:
  `fmt: OutputFormat = console.format_option()`, `quiet: bool = console.quiet_option()`, then
  `out = console.Output(fmt, quiet)` and `out.table(table, data=...)`, `out.line("wrote ...")`,
  `with out.progress("label") as update: ...`.
- **--quiet**: no progress, no tables, no notes on stdout; errors and warnings still go to stderr and
  `--format json` still prints its JSON (it was asked for).
- **Progress** (`progress`): a live bar on a terminal; otherwise a line on stderr when a phase starts or
  ends, and at most every `every_s` seconds in between, so a CI log shows the run is alive.
- `fit_streams()` (called once per invocation by the app) makes plain `out.print(...)` calls on a
  non-terminal stdout stop folding long lines and tables at 80 columns, so call sites that have not
  adopted `Output` yet behave too; log records on a non-terminal stderr are plain `warning: ...` lines.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from types import TracebackType
from typing import Any, Callable

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

#: width given to a console that is not a terminal: wide enough that nothing folds
UNFOLDED_WIDTH = 100_000


class _PlainHandler(logging.Handler):
    """Log records as `level: message` lines on stderr, unwrapped (for a stderr that is not a terminal)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err.print(f"{record.levelname.lower()}: {record.getMessage()}", markup=False, highlight=False,
                      soft_wrap=True, emoji=False)
        except Exception:  # logging must never raise
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    """Library modules log through `logging`; the CLI shows warnings (or everything with --verbose).

    On a terminal records go through rich; otherwise as plain `warning: ...` lines that are never folded.
    """
    root = logging.getLogger("onnxforge")
    handler: logging.Handler = (RichHandler(console=err, show_time=False, show_path=False, markup=False)
                                if err.is_terminal else _PlainHandler())
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False


def fit_streams() -> None:
    """A stdout that is not a terminal stops wrapping: long lines and tables printed there are not folded."""
    if not out.is_terminal:
        out.width = UNFOLDED_WIDTH
        out.soft_wrap = True


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


# ---------------------------------------------------------------------------------------------- tables


class OutputFormat(str, enum.Enum):
    """What a table-printing command writes to stdout."""

    text = "text"
    md = "md"
    json = "json"


def format_option(default: OutputFormat = OutputFormat.text) -> Any:
    """The `--format text|md|json` option, declared once for every command (a fresh typer.Option)."""
    return typer.Option(default, "--format", case_sensitive=False,
                        help="stdout: text (a rich table on a terminal, plain lines otherwise), md (markdown) or json.")


def quiet_option() -> Any:
    """The `--quiet/-q` option, declared once for every command (a fresh typer.Option)."""
    return typer.Option(False, "--quiet", "-q",
                        help="No progress, tables or notes; errors and warnings still go to stderr (json still prints).")


def _plain(cell: Any) -> str:
    """A table cell as plain text: markup strings are rendered, Text objects flattened, newlines kept."""
    if cell is None:
        return ""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        try:
            return Text.from_markup(cell).plain
        except Exception:  # not valid markup (e.g. "[1, 2]" with odd brackets): show it as written
            return cell
    return str(cell)


def table_cells(table: Table) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a rich table as plain strings."""
    headers = [_plain(c.header) for c in table.columns]
    columns = [[_plain(cell) for cell in c.cells] for c in table.columns]
    rows = [list(r) for r in zip(*columns)] if columns else []
    return headers, rows


def table_text(table: Table) -> str:
    """Plain text: an optional title line, aligned columns separated by two spaces, one line per row.

    Cells with newlines are joined with ' / ' so a row stays one line; nothing is folded or cut.
    """
    headers, rows = table_cells(table)
    rows = [[c.replace("\n", " / ") for c in r] for r in rows]
    show_header = table.show_header and any(headers)
    body = ([headers] if show_header else []) + rows
    widths = [max((len(r[i]) for r in body), default=0) for i in range(len(headers))]
    lines = []
    if table.title:
        lines.append(_plain(table.title))
    for n, r in enumerate(body):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if show_header and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if table.caption:
        lines.append(_plain(table.caption))
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def table_markdown(table: Table) -> str:
    """A GitHub-flavoured markdown table ('|' escaped, newlines as <br>), the title as a bold line above."""
    headers, rows = table_cells(table)
    if not any(headers):
        headers = [f"col{i + 1}" for i in range(len(headers))] if headers else []
    lines = [f"**{_md_cell(_plain(table.title))}**", ""] if table.title else []
    lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows)
    return "\n".join(lines)


def table_records(table: Table) -> list[dict[str, str]]:
    """The rows as objects keyed by header (columns without a header get col1, col2, ...)."""
    headers, rows = table_cells(table)
    keys = [h or f"col{i + 1}" for i, h in enumerate(headers)]
    return [dict(zip(keys, r)) for r in rows]


class Output:
    """Where a command's results go, honouring `--format` and `--quiet` (module docstring)."""

    def __init__(self, fmt: OutputFormat | str = OutputFormat.text, quiet: bool = False,
                 console: Console | None = None) -> None:
        self.fmt = OutputFormat(fmt.value if isinstance(fmt, OutputFormat) else str(fmt).lower())
        self.quiet = quiet
        self.console = console or out

    @property
    def is_json(self) -> bool:
        return self.fmt is OutputFormat.json

    def table(self, table: Table, data: Any = None) -> None:
        """Prints `table` in the chosen format; with json, prints `data` (default: the table's rows)."""
        if self.is_json:
            self.json(table_records(table) if data is None else data)
            return
        if self.quiet:
            return
        if self.fmt is OutputFormat.md:
            self._write(table_markdown(table) + "\n")
        elif self.console.is_terminal:
            self.console.print(table)
        else:
            self._write(table_text(table))

    def line(self, text: str = "", markup: bool = False) -> None:
        """A note or a 'wrote FILE' line: printed for text and md, not with --quiet or json."""
        if self.quiet or self.is_json:
            return
        if markup and self.console.is_terminal:
            self.console.print(text, markup=True, highlight=False, soft_wrap=True)
        else:
            self._write(_plain(text) if markup else text)

    def json(self, data: Any) -> None:
        """One JSON document on stdout (non-finite floats and paths are written as strings)."""
        self._write(json.dumps(data, indent=2, default=str))

    def progress(self, label: str | None = None, every_s: float = 5.0) -> "ProgressReporter":
        """`progress(...)` on stderr, silent with --quiet (stdout, and so json, is never touched)."""
        return progress(label, quiet=self.quiet, every_s=every_s)

    def _write(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)


# -------------------------------------------------------------------------------------------- progress


ProgressFn = Callable[[str, int, int], None]


class ProgressReporter:
    """Shows (phase, done, total) updates: a rich bar per phase on a terminal, lines on stderr otherwise.

    Use as a context manager; the object itself is the `(phase, done, total)` callback. `counter(phase)`
    gives a `(done, total)` callback for one phase; `step(name, index, total)` shows one bar whose
    description is the current step (for work in a few named steps, e.g. export).
    """

    def __init__(self, label: str | None = None, *, quiet: bool = False, every_s: float = 5.0,
                 console: Console | None = None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.quiet = quiet
        self.every_s = every_s
        self.console = console or err
        self.live = self.console.is_terminal if live is None else live
        self.clock = clock
        self._bars = None
        self._tasks: dict[str, Any] = {}
        self._last_phase: str | None = None
        self._finished: set[str] = set()
        self._last_line = -float("inf")
        self._start = clock()

    def __enter__(self) -> "ProgressReporter":
        self._start = self.clock()
        if self.live and not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bars = Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console, transient=False)
            self._bars.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bars is not None:
            self._bars.__exit__(exc_type, exc, tb)
            self._bars = None

    def _name(self, phase: str) -> str:
        return f"{self.label}: {phase}" if self.label and phase else (self.label or phase)

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.quiet:
            return
        name = self._name(phase)
        if self._bars is not None:
            if name not in self._tasks:
                self._tasks[name] = self._bars.add_task(name, total=total or None)
            self._bars.update(self._tasks[name], completed=done, total=total or None)
            return
        now = self.clock()
        if total and done >= total:
            if name in self._finished:
                return
            self._finished.add(name)
        elif name == self._last_phase and now - self._last_line < self.every_s:
            return
        self._line(f"{name}: {done}/{total}" if total else f"{name}: {done}", now)
        self._last_phase = name

    def counter(self, phase: str) -> Callable[[int, int], None]:
        """A `(done, total)` callback for one phase (for library functions that report plain counts)."""
        return lambda done, total: self(phase, done, total)

    def step(self, name: str, index: int, total: int) -> None:
        """Step `index` (0-based) of `total` named `name` starts; `index == total` means all are done."""
        if self.quiet:
            return
        if self._bars is not None:
            key = self.label or "progress"
            desc = f"{self.label}: {name}" if self.label else name
            if key not in self._tasks:
                self._tasks[key] = self._bars.add_task(desc, total=total)
            self._bars.update(self._tasks[key], completed=index, total=total, description=desc)
            return
        now = self.clock()
        prefix = f"{self.label}: " if self.label else ""
        if index >= total:
            self._line(f"{prefix}{name} ({now - self._start:.1f} s)", now)
        else:
            self._line(f"{prefix}{name} ({index + 1}/{total}, {now - self._start:.1f} s)", now)

    def _line(self, text: str, now: float) -> None:
        self._last_line = now
        self.console.print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)


def progress(label: str | None = None, *, quiet: bool = False, every_s: float = 5.0,
             clock: Callable[[], float] = time.monotonic) -> ProgressReporter:
    """A progress display on stderr (see `ProgressReporter`); `with console.progress("x") as update:`."""
    return ProgressReporter(label, quiet=quiet, every_s=every_s, clock=clock)
