"""`shared.utilities`: helpers older plugins import from here."""

from engine.shared.utilities.files import resolve_url_to_local_path

__all__ = ["resolve_url_to_local_path"]
