"""Placeholder: this command group is being written (see the open issues); it registers nothing yet."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
