"""``nexusd``: entry point, configuration, wiring of adapters into services, and serving."""

__all__: list[str] = []
