"""Settings that carry their own documentation: default, meaning, source, allowed range.

Every knob of the library is a dataclass field declared with :func:`setting`; its metadata is the
*one* place where the default's reason is written. The CLI builds its flags' help from it, the
README's flag tables are generated from the CLI (``scripts/flags_table.py``), the benchmarks
read the dataclass, and :func:`validate` checks every value against the declared range -- so a
flag like ``--lr 1e30`` is refused with the same sentence everywhere.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, field, fields
from typing import Any

from .errors import ConfigError

__all__ = ["setting", "validate", "help_text", "describe"]


def setting(default: Any, help: str, *, source: str = "", low: float | None = None,
            high: float | None = None, choices: tuple | None = None, group: str = "",
            flag: bool = True, optional: bool = False) -> Field:
    """A dataclass field with its documentation.

    ``help``: what it does; ``source``: where the default comes from (a measurement, the paper,
    a public figure, or "no source" said plainly); ``low``/``high``: inclusive bounds of a
    number (values outside make no sense and are refused); ``choices``: the allowed values;
    ``group``: the help section of the flag; ``flag=False``: library-only, no CLI flag;
    ``optional``: ``None`` is allowed too (it means "decided later", as the help says).
    """
    meta = {"help": help, "source": source, "low": low, "high": high, "choices": choices,
            "group": group, "flag": flag, "optional": optional}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _in_range(value: Any, low: float | None, high: float | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def validate(obj: Any) -> None:
    """Raise :class:`ConfigError` naming the first field of ``obj`` outside its declared range.

    The message starts with the field's name (``"lr must be ..."``), which the CLI turns into
    the flag's (``"--lr must be ..."``).
    """
    for f in fields(obj):
        meta, value = f.metadata, getattr(obj, f.name)
        if not meta or (value is None and meta.get("optional")):
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))} "
                              f"(got {value!r})")
        low, high = meta.get("low"), meta.get("high")
        if (low is not None or high is not None) and not _in_range(value, low, high):
            lo = "" if low is None else _number(low)
            hi = "" if high is None else _number(high)
            span = f"in [{lo}, {hi}]" if lo and hi else (f">= {lo}" if lo else f"<= {hi}")
            raise ConfigError(f"{f.name} must be {span} (got {value!r})")


def help_text(f: Field) -> str:
    """A field's help sentence followed by its source, as shown by ``--help``."""
    meta = f.metadata
    text = meta.get("help", "")
    if meta.get("source"):
        text += f" [{meta['source']}]"
    return text


def describe(cls: type, name: str) -> dict[str, Any]:
    """The documentation of field ``name`` of dataclass ``cls`` (default included)."""
    f = next(f for f in fields(cls) if f.name == name)
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return {"default": default, **f.metadata}
