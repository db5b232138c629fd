"""A result's JSON from its own fields, serialised by msgspec.

Every field of a result type is in its JSON unless the type names it as left out, so a field
added later is serialised without anyone remembering to list it. The type's ``to_json`` adds
what is derived (a property, a count), never a copy of a stored field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

import msgspec

_NONE: Mapping[str, Any] = {}


def _field_names(obj: object) -> tuple[str, ...]:
    if isinstance(obj, msgspec.Struct):
        return obj.__struct_fields__
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return tuple(f.name for f in dataclasses.fields(obj))
    raise TypeError(f"not a dataclass or a msgspec Struct: {type(obj).__name__}")


def fields_json(
    obj: object,
    *,
    omit: Collection[str] = (),
    rename: Mapping[str, str] = _NONE,
    values: Mapping[str, Any] = _NONE,
    derived: Mapping[str, Any] = _NONE,
) -> dict[str, Any]:
    """``obj``'s fields (a dataclass's or a Struct's), in field order, as JSON builtins.

    - ``omit``: fields kept out (working state, or what ``derived`` summarises);
    - ``rename``: field -> the key it is written under;
    - ``values``: field -> the value written in its place (a field that needs shaping, e.g. a
      mapping with sorted or string keys);
    - ``derived``: computed keys, written after the fields.

    Through JSON rather than ``msgspec.to_builtins``, so the result is what a reader of the
    printed JSON gets back (lists, not tuples): callers compare the two. Only the fields kept
    are converted, so an omitted field (a run's per-step records) costs nothing.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Result:
    ...     steps: int
    ...     moves: tuple[int, ...]
    ...     scratch: object = None
    >>> fields_json(Result(2, (1, 0)), omit={"scratch"}, derived={"per_step": 0.5})
    {'steps': 2, 'moves': [1, 0], 'per_step': 0.5}
    """
    shallow = {
        rename.get(name, name): values[name] if name in values else getattr(obj, name)
        for name in _field_names(obj)
        if name not in omit
    }
    shallow.update(derived)
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(shallow))
    return out
