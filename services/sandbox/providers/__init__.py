"""Sandbox providers: where sandboxes live. `local` keeps one directory per sandbox on this machine."""

from services.sandbox.providers.local import LocalProvider

__all__ = ["LocalProvider"]
