"""`shared.utilities.files.resolve_url_to_local_path`: the old name of `download_asset`, kept so
plugins written against earlier docs load unchanged. Returns `(path, is_temp)`; prefer `open_asset`,
which also deletes the temp file."""

from engine.assets import download_asset

resolve_url_to_local_path = download_asset

__all__ = ["resolve_url_to_local_path"]
