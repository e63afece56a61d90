"""The command-line interface: thin Typer commands over the library (one module per command group)."""
