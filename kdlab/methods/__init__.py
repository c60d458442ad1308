"""Methods: one file each, all the same kind of object (:class:`Method`), found by name.

Every module in this package is imported here, so a new method file registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import METHODS, Method, parse_value, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``; ValueError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "Method", "get_method", "parse_value", "register"]
