"""Plugins that ship with Sluice, in the plugin format (manifest.py, pipeline.py, realtime.py),
so they pass the same scanner and validator as uploaded ones."""

from __future__ import annotations

from pathlib import Path

from events.errors import NotFound

_HERE = Path(__file__).resolve().parent

BUILTIN_PLUGINS: dict[str, Path] = {
    "text_embedding": _HERE / "text_embedding",
}
"""Builtin plugin name -> its folder."""


def builtin_plugin_path(name: str) -> Path:
    """The folder of the builtin plugin `name`; NotFound names the available ones."""
    path = BUILTIN_PLUGINS.get(name)
    if path is None:
        available = sorted(BUILTIN_PLUGINS)
        raise NotFound(
            f"no builtin plugin named {name!r}; available: {', '.join(available)}",
            details={"name": name, "available": available},
        )
    return path


__all__ = ["BUILTIN_PLUGINS", "builtin_plugin_path"]
