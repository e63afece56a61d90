"""The `onnxforge` command. Every command parses, calls one library function, and renders the result.

Exit codes and what stderr shows:
- 0: success.
- 1: a ForgeError (a user error): one line `error: <message>`, never a traceback.
- 2: a usage error (unknown option, bad value, missing argument): one line `error: <message>` and at most
  a `try 'onnxforge CMD --help'` hint; no usage block, no boxed panel.
- 130: Ctrl-C: one line `interrupted` (writers are atomic, so nothing half-written is left).

`-v/--verbose` is accepted before the subcommand and after it (every subcommand gets the option).
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Callable

import typer

try:  # typer >= 0.26 vendors click as typer._click: the exceptions its parser raises come from there
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_exc
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
    console.fit_streams()
    console.setup_logging(verbose)


def _register() -> None:
    from onnxforge.cli import (
        bisect_cmd, calibrate_cmd, compare_cmd, evaluate_cmd, export_cmd, optimize_cmd, report_cmd, shapes_cmd,
    )

    for module in (optimize_cmd, export_cmd, evaluate_cmd, report_cmd, bisect_cmd, shapes_cmd, compare_cmd, calibrate_cmd):
        module.register(app)
    for info in app.registered_commands:  # every command, whoever registered it, accepts -v after its name
        if info.callback is not None:
            info.callback = _with_verbose(info.callback)


def _with_verbose(callback: Callable) -> Callable:
    """`callback` with a `-v/--verbose` option of its own, so `onnxforge CMD ... -v` works like `onnxforge -v CMD`."""
    sig = inspect.signature(callback, eval_str=True)
    if "verbose" in sig.parameters:
        return callback

    @functools.wraps(callback)
    def command(*args, verbose: bool = False, **kwargs):
        if verbose:
            console.setup_logging(True)
        return callback(*args, **kwargs)

    option = typer.Option(False, "--verbose", "-v", help="Show the library's log messages (also accepted before the command).")
    command.__signature__ = sig.replace(parameters=[
        *sig.parameters.values(), inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool)])
    command.__annotations__ = {**getattr(callback, "__annotations__", {}), "verbose": bool}
    return command


_register()


def _error(message: str, hint: str | None = None) -> None:
    console.err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    if hint:
        console.err.print(hint, markup=False, highlight=False, soft_wrap=True)


def _usage_hint(exc: click_exc.UsageError) -> str | None:
    ctx = exc.ctx
    if ctx is None or ctx.command.get_help_option(ctx) is None:
        return None
    return f"try '{ctx.command_path} --help'"


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (see the module docstring)."""
    try:
        rv = app(args=argv, prog_name="onnxforge", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        # typer's rich help has already been printed while the exception was built
        if exc.format_message().strip():
            console.out.print(exc.format_message(), markup=False, highlight=False, soft_wrap=True)
        return 2
    except click_exc.UsageError as exc:
        _error(" ".join(exc.format_message().split()), _usage_hint(exc))
        return 2
    except click_exc.ClickException as exc:
        _error(" ".join(exc.format_message().split()))
        return exc.exit_code
    except typer.Abort:
        console.err.print("interrupted", markup=False, highlight=False)
        return 130
    except typer.Exit as exc:
        code = exc.exit_code
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ForgeError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        console.err.print("interrupted", markup=False, highlight=False)
        return 130
    # typer turns a KeyboardInterrupt inside a command into Exit(130), returned here as the code
    code = rv if isinstance(rv, int) else 0
    if code == 130:
        console.err.print("interrupted", markup=False, highlight=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
