"""Messages in the language of the interface that shows them.

A message that tells the user what to do names an option, and the option is spelt differently
in Python (``resume=True``) and on the command line (``--resume``). Such messages are written
once, as templates whose fields are options::

    say("{out} holds a run: {resume} continues it, {overwrite} starts it afresh", out=path)

gives ``… resume=True continues it, overwrite=True starts it afresh`` from the Python API and
``… --resume continues it, --overwrite starts it afresh`` inside :func:`speaking` ``("cli")``,
which the command line wraps around every command. A field ``{name}`` is the option switched on,
``{name=value}`` the option with a value (``device='cpu'`` / ``--device cpu``); other fields
are the keyword values given to :func:`say`.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

__all__ = ["INTERFACES", "interface", "option", "say", "speaking"]

INTERFACES = ("python", "cli")
_INTERFACE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "kdlab_interface", default="python"
)


def interface() -> str:
    """The interface messages are written for now: ``"python"`` (default) or ``"cli"``."""
    return _INTERFACE.get()


@contextlib.contextmanager
def speaking(name: str) -> Iterator[None]:
    """Write every message of the block for the interface ``name`` (``"python"`` or ``"cli"``)."""
    if name not in INTERFACES:
        raise ValueError(f"unknown interface {name!r}; choose one of: {', '.join(INTERFACES)}")
    token = _INTERFACE.set(name)
    try:
        yield
    finally:
        _INTERFACE.reset(token)


def option(name: str, value: Any = True) -> str:
    """The option ``name`` set to ``value``, as the current interface spells it:
    ``option("resume")`` is ``resume=True`` or ``--resume``; ``option("device", "cpu")`` is
    ``device='cpu'`` or ``--device cpu``."""
    if interface() == "cli":
        flag = "--" + name.replace("_", "-")
        return flag if value is True else f"{flag} {value}"
    return f"{name}={value!r}"


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        name, sep, value = key.partition("=")
        return option(name, _literal(value)) if sep else option(name)


def say(template: str, **values: Any) -> str:
    """``template`` with its option fields spelt for the current interface and its other fields
    filled from ``values`` (``str.format`` syntax, e.g. ``{path}`` or ``{name!r}``)."""
    return template.format_map(_Fields(values))
