"""CLI helpers shared by `report`, `optimize --auto`, `evaluate`, `bisect` and `demo`: data options, budget,
timing policy, the evaluation-cache options, the decision table (progress and output formats are
`cli.console`'s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from onnxforge.errors import ForgeError


def parse_budget(text: str):
    """'1%' -> 1% relative drop, '0.5pt' -> 0.5 metric points; a ForgeError naming --budget otherwise."""
    from onnxforge.evaluate.history import Budget

    try:
        return Budget.parse(text)
    except ForgeError as exc:
        raise ForgeError(f"--budget: {exc}".replace("budget: budget:", "budget:")) from None


def timing_policy(min_rounds: int, max_rounds: int, max_seconds: float, seed: int = 0):
    """The interleaved-timing policy from the CLI's --min-rounds/--max-rounds/--max-seconds."""
    from onnxforge.evaluate.timing import TimingPolicy

    if min_rounds < 2:
        raise ForgeError(f"--min-rounds: must be at least 2, got {min_rounds}")
    if max_rounds < min_rounds:
        raise ForgeError(f"--max-rounds: must be at least --min-rounds ({min_rounds}), got {max_rounds}")
    if not max_seconds > 0:
        raise ForgeError(f"--max-seconds: must be positive, got {max_seconds}")
    policy = TimingPolicy(min_rounds=min_rounds, max_rounds=max_rounds, max_seconds=max_seconds, seed=seed)
    policy.validate()
    return policy


def data_source(dataset: Optional[str], data_root: Optional[Path], synthetic: Optional[int], preset: Optional[str],
                limit: Optional[int], num_classes: Optional[int] = None):
    from onnxforge.evaluate.ab import DataSource

    if num_classes is not None and num_classes < 1:
        raise ForgeError(f"--num-classes: expected a positive class count, got {num_classes}")
    if synthetic is not None and dataset is not None:
        raise ForgeError("give either --dataset/--data-root or --synthetic N, not both")
    if synthetic is not None:
        if synthetic <= 0:
            raise ForgeError(f"--synthetic: expected a positive image count, got {synthetic}")
        return DataSource("synthetic", None, preset, synthetic, num_classes)
    if dataset is None:
        raise ForgeError("accuracy needs data: give --dataset NAME --data-root DIR (with --preset MODEL), or --synthetic N")
    return DataSource(dataset, data_root, preset, limit, num_classes)


def decision_table(stages, title: str, judged_on=None, full: bool = True):
    """The decision table as a rich Table (green keep, red reject, cyan baseline)."""
    from rich.table import Table

    from onnxforge.evaluate.report_files import decision_rows, table_rows

    header, rows = (table_rows if full else decision_rows)(stages, judged_on)
    table = Table(title=title)
    for h in header:
        table.add_column(h, overflow="fold")
    style = {"accepted": "green", "rejected": "red", "baseline": "cyan"}
    for s, r in zip(stages, rows):
        table.add_row(*r, style=style.get(s.verdict))
    return table


# ---------------------------------------------------------------------------- the evaluation cache
def no_cache_option() -> Any:
    """`--no-cache`, declared once for every command that evaluates (a fresh typer.Option)."""
    return typer.Option(False, "--no-cache", help="Do not read or write the evaluation cache: evaluate everything again, store nothing.")


def cache_dir_option() -> Any:
    """`--cache-dir DIR`."""
    return typer.Option(None, "--cache-dir", help="Evaluation cache directory (default: $ONNXFORGE_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/onnxforge/eval, else ~/.cache/onnxforge/eval).", show_default=False)


def cache_size_option() -> Any:
    """`--cache-size SIZE` (default 2G)."""
    return typer.Option("2G", "--cache-size", help="Size limit of the evaluation cache, e.g. 500M, 2G; the least recently "
                        "used results are evicted beyond it.")


def cache_latency_option() -> Any:
    """`--cache-latency`."""
    return typer.Option(False, "--cache-latency", help="Also reuse cached timings (by default timings are always measured "
                        "again: they depend on the machine's state).")


def open_cache(no_cache: bool, cache_dir: Optional[Path], cache_size: str):
    """The `EvalCache` the options name, or None with --no-cache (nothing is read or written then).

    Raises:
        ForgeError: a bad --cache-size (before anything runs).
    """
    from onnxforge.evaluate.cache import EvalCache, parse_size

    size = parse_size(cache_size)
    if no_cache:
        return None
    return EvalCache(cache_dir, size)


def cache_line(cache, what: str = "evaluations") -> Optional[str]:
    """``reused 5 of 7 evaluations from the cache (DIR)`` (None without a cache, when nothing was looked up,
    or when the cache is off: its warning said so already)."""
    if cache is None or cache.stats.lookups == 0 or cache.disabled_reason is not None:
        return None
    return cache.summary(what)


#: what --workers/--executor say about timing, in every command's help
PARALLEL_NOTE = ("Only accuracy evaluations run in parallel; timing runs stay serial and interleaved in this "
                 "process, never concurrent with evaluations or with each other.")


def workers_option():
    import typer

    return typer.Option(1, "--workers", help="Evaluations (stages, per-node variants, dataset shards) run on N worker "
                        "processes, each with its own session and cores // N threads (workers x threads <= cores); "
                        "1: serially in this process. " + PARALLEL_NOTE)


def executor_option():
    import typer

    from onnxforge.evaluate.executor import executor_names

    return typer.Option("serial", "--executor", help=f"Where evaluations run: {' | '.join(executor_names())} "
                        "(serial with --workers > 1 means pool; ray needs the ray extra: pip install 'onnxforge\\[ray]').")


def ray_address_option():
    import typer

    return typer.Option(None, "--ray-address", help="Ray cluster to run evaluations on (HOST:PORT, ray://HOST:PORT or auto; "
                        "with --executor ray; default: a local cluster started for this run). Models go to the "
                        "object store once; a dataset on disk must be at the same path on every node.")


def executor_from_cli(name: str, workers: int, ray_address: Optional[str], threads: Optional[int] = None):
    """The executor of --executor/--workers/--ray-address (--threads: each worker's threads, 0/None: its default);
    a ForgeError naming the flag for a bad value (--workers 0, a budget over the cores, an unreachable address)."""
    from onnxforge.evaluate.executor import make_executor

    return make_executor(name, workers=workers, threads=threads or None, address=ray_address)
