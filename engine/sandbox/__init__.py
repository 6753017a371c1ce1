"""The plugin host: plugin code in a confined child process per (namespace, plugin version)."""
