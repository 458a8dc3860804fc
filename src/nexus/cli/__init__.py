"""``nexusctl``: the command-line interface (Typer + Rich) over the nexusd API."""

__all__: list[str] = []
