"""Plugins: loading, running and safely unpacking uploaded plugin archives."""
