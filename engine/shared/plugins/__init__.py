"""`shared.plugins`: what the docs import at the package level (asset access)."""

from engine.assets import download_asset, open_asset

__all__ = ["download_asset", "open_asset"]
