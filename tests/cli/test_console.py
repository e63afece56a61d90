"""cli.console: tables outside a terminal, --format/--quiet, progress lines (fake clock, in-memory consoles)."""

from __future__ import annotations

import io
import json

import pytest
import typer
from rich.console import Console
from rich.table import Table

from onnxforge.cli import console
from onnxforge.cli.console import Output, OutputFormat, ProgressReporter, table_markdown, table_text

LONG = "a cell that is much longer than eighty columns " * 4


def _table() -> Table:
    t = Table(title="[bold]stages[/]")
    t.add_column("stage")
    t.add_column("note")
    t.add_row("0-baseline", LONG.strip())
    t.add_row("1-simplify", "a|b [dim]dimmed[/]")
    return t


def _pipe() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=80, highlight=False), buf


def _tty() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=80, force_terminal=True, highlight=False), buf


def test_text_outside_a_terminal_is_plain_and_never_folded():
    con, buf = _pipe()
    Output("text", console=con).table(_table())
    lines = buf.getvalue().splitlines()
    assert lines[0] == "stages"
    assert lines[1].split() == ["stage", "note"] and set(lines[2].replace(" ", "")) == {"-"}
    assert any(LONG.strip() in ln and ln.startswith("0-baseline") for ln in lines)  # one line, uncut
    assert "a|b dimmed" in buf.getvalue() and "[dim]" not in buf.getvalue()
    assert not set("┏┃│╭─━") & set(buf.getvalue())


def test_text_on_a_terminal_is_a_rich_table():
    con, buf = _tty()
    Output("text", console=con).table(_table())
    assert "┃" in buf.getvalue() or "│" in buf.getvalue()


def test_markdown_escapes_pipes_and_keeps_rows_whole():
    md = table_markdown(_table())
    lines = md.splitlines()
    assert lines[0] == "**stages**" and lines[2] == "| stage | note |" and lines[3] == "|---|---|"
    assert lines[4] == f"| 0-baseline | {LONG.strip()} |"
    assert lines[5] == "| 1-simplify | a\\|b dimmed |"
    con, buf = _tty()
    Output(OutputFormat.md, console=con).table(_table())
    assert buf.getvalue().strip() == md  # md is md, on a terminal too


def test_json_prints_the_data_or_the_rows():
    con, buf = _pipe()
    Output("json", console=con).table(_table())
    assert json.loads(buf.getvalue()) == [{"stage": "0-baseline", "note": LONG.strip()},
                                          {"stage": "1-simplify", "note": "a|b dimmed"}]
    con, buf = _pipe()
    out = Output("JSON", quiet=True, console=con)
    out.table(_table(), data={"best": "1-simplify"})
    out.line("wrote x")
    assert json.loads(buf.getvalue()) == {"best": "1-simplify"}  # quiet keeps the asked-for json, drops notes


def test_quiet_prints_nothing_on_stdout():
    con, buf = _pipe()
    out = Output("text", quiet=True, console=con)
    out.table(_table())
    out.line("note: something")
    assert buf.getvalue() == ""


def test_lines_are_not_wrapped():
    con, buf = _pipe()
    Output("text", console=con).line("wrote " + LONG)
    assert buf.getvalue() == "wrote " + LONG + "\n"


def test_cells_with_newlines_stay_on_one_line_and_headerless_tables_work():
    t = Table(show_header=False, box=None)
    t.add_column()
    t.add_column()
    t.add_row("input", "x 1x3\nstatic")
    assert table_text(t) == "input  x 1x3 / static"
    assert "| col1 | col2 |" in table_markdown(t)


def test_options_are_reusable_typer_options():
    app = typer.Typer()

    @app.command()
    def show(fmt: OutputFormat = console.format_option(), quiet: bool = console.quiet_option()) -> None:
        typer.echo(f"{fmt.value} {quiet}")

    @app.command()
    def other(fmt: OutputFormat = console.format_option(OutputFormat.md)) -> None:
        typer.echo(fmt.value)

    from typer.testing import CliRunner

    runner = CliRunner()
    assert runner.invoke(app, ["show", "--format", "json", "-q"]).output.strip() == "json True"
    assert runner.invoke(app, ["show"]).output.strip() == "text False"
    assert runner.invoke(app, ["other"]).output.strip() == "md"
    assert runner.invoke(app, ["show", "--format", "yaml"]).exit_code == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_outside_a_terminal_prints_phase_changes_and_throttled_lines():
    con, buf = _pipe()
    clock = FakeClock()
    with ProgressReporter("report", console=con, live=False, every_s=5.0, clock=clock) as update:
        for done in range(1, 11):
            update("evaluate 0-baseline", done, 10)
            clock.now += 1.0
        count = update.counter("time stages")
        count(1, 3)
        count(3, 3)
        count(3, 3)
    assert buf.getvalue().splitlines() == [
        "report: evaluate 0-baseline: 1/10",
        "report: evaluate 0-baseline: 6/10",   # 5 s later
        "report: evaluate 0-baseline: 10/10",  # the end of a phase is always shown
        "report: time stages: 1/3",
        "report: time stages: 3/3",            # once
    ]


def test_progress_steps_outside_a_terminal():
    con, buf = _pipe()
    clock = FakeClock()
    with ProgressReporter("export", console=con, live=False, clock=clock) as rep:
        rep.step("build model", 0, 2)
        clock.now += 2.5
        rep.step("export", 1, 2)
        clock.now += 1.0
        rep.step("done", 2, 2)
    assert buf.getvalue().splitlines() == [
        "export: build model (1/2, 0.0 s)", "export: export (2/2, 2.5 s)", "export: done (3.5 s)"]


def test_progress_quiet_is_silent_and_live_mode_draws_on_a_terminal():
    con, buf = _pipe()
    with ProgressReporter("x", console=con, live=False, quiet=True) as rep:
        rep("phase", 1, 2)
        rep.step("s", 0, 1)
    assert buf.getvalue() == ""
    con, buf = _tty()
    with ProgressReporter("x", console=con) as rep:
        assert rep.live
        rep("phase", 1, 2)
        rep.step("s", 0, 1)
    assert "x: phase" in buf.getvalue() and "x: s" in buf.getvalue()


def test_bad_format_value_is_rejected():
    with pytest.raises(ValueError):
        Output("yaml")
