"""The `onnxforge` command. Every command parses, calls one library function, and renders the result.

Any ForgeError becomes one line on stderr and exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from onnxforge import __version__
from onnxforge.cli import console
from onnxforge.errors import ForgeError

app = typer.Typer(
    name="onnxforge",
    help=(
        "Port PyTorch vision models to inference accelerators: export to ONNX, apply verified graph "
        "rewrites, compile (atc) or run (onnxruntime), and measure accuracy vs speed per pass."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.out.print(f"onnxforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the library's log messages."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    console.setup_logging(verbose)


def _register() -> None:
    from onnxforge.cli import evaluate_cmd, export_cmd, optimize_cmd, report_cmd

    for module in (optimize_cmd, export_cmd, evaluate_cmd, report_cmd):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (usage errors: 2, user errors: 1)."""
    try:
        app(args=argv, prog_name="onnxforge")  # standalone: handles --help and usage errors itself
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ForgeError as exc:
        console.err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
