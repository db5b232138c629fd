"""One encoder and one decoder for every event, built once and reused."""

from __future__ import annotations

from typing import Any

import msgspec

from ._errors import CorruptEventError
from ._types import AnyEvent, Event

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_canonical = msgspec.json.Encoder(order="sorted")


def encode(event: Event) -> bytes:
    """Encode an event as compact JSON, its ``type`` tag first."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> AnyEvent:
    """Decode JSON into its typed event, or raise :class:`CorruptEventError`."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise CorruptEventError(str(exc)) from exc


def to_dict(event: Event) -> dict[str, Any]:
    """The event as plain JSON-compatible builtins, with its ``type`` tag."""
    out = msgspec.to_builtins(event)
    assert isinstance(out, dict)
    return out


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the text two equal answers always share."""
    return _canonical.encode(value).decode()
