"""The compact binary codec of log schema version 2: msgpack bodies, interned blobs, zstd.

Version 1 stored each event as the JSON of the whole event, about 2 KB a sample on Hanoi. Most of
those bytes repeat: the envelope (run id, seq, ts, type, step) that the store can keep in
columns, field names, the step's candidate JSON copied into every vote and tally, the state
written twice (``state_changed`` of step n and ``step_started`` of step n+1), and model texts
that are nearly identical to each other. This module removes the repetition:

- **Envelope out of the body.** The body is a msgpack array of the other fields in declared
  order; trailing fields equal to their defaults are left off.
- **Blobs.** A long string (16 characters or more), a long ``Any`` value (16 msgpack bytes or
  more) and a long tally key are stored once in a content table and referenced from the body by
  a msgpack ext value holding the blob id. The encoder remembers recent values (a bounded LRU),
  so a value repeated nearby is one blob however often it is referenced.
- **zstd.** A blob's payload is compressed when that is smaller: plain zstd at first, then with
  a dictionary trained on the strings this encoder has seen (one per encoder lifetime, see
  :class:`Encoder`). Frames are magicless and carry neither a checksum nor a dictionary id:
  the chain hash covers the bytes and the blob names its dictionary itself.

Wire formats (never change them; add new codes instead):

- Body: msgpack array. Ext code 1 = blob reference (id, little-endian in 1, 2, 4 or 8 bytes);
  ext 2 = the n-th distinct blob already referenced in this body (1 byte, saves bytes on
  repeats); ext 3 = an int outside msgpack's range (signed decimal ASCII), in a body or inside
  a msgpack blob.
- Field encodings: ``sample_id`` equal to ``f"{step}:{n}"`` is the int ``n``; a float that is
  integral, not ``-0.0`` and below 2**53 in magnitude is an int (decode makes it a float again);
  ``dict[str, int]`` is a flat array ``[key, count, key, count, ...]`` in insertion order;
  a field that may be unset (``str | UnsetType``) is an inline string, never a blob (its values,
  such as provider response ids, are unique, so interning would only add a row each), and nil
  when unset before a later field; so is a ``float | UnsetType`` (encoded as a float is).
- Blob data: one kind byte, then the payload. Bits 0-1 of the kind say what the payload is
  (0 UTF-8 string, 1 msgpack value; 2 and 3 unused); bits 2-3 how it is stored (0 as is, 1 zstd
  frame, 2 zstd frame with a dictionary, whose id follows the kind as a LEB128 varint).

This module does no I/O and reads no clock: the store owns the tables and the transactions.
"""

from __future__ import annotations

import math
import operator
import types
import typing
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

import msgspec
import zstandard

from ._errors import CorruptEventError, InvalidOptionError, UnencodableEventError
from ._types import EVENT_TYPES, AnyEvent, Event, StepEvent, event_tag

__all__ = [
    "TYPE_BY_CODE",
    "TYPE_CODES",
    "Decoder",
    "EncodedEvent",
    "Encoder",
]

# -- type codes ----------------------------------------------------------------------------

# Stored in every row of a v2 log. Codes are never renumbered or reused: a new event type takes
# the next free number, and a test checks this table against EVENT_TYPES.
TYPE_CODES: Final[Mapping[str, int]] = types.MappingProxyType(
    {
        "run_started": 1,
        "step_started": 2,
        "sample_requested": 3,
        "sample_received": 4,
        "sample_failed": 5,
        "sample_cancelled": 6,
        "red_flagged": 7,
        "vote_counted": 8,
        "step_decided": 9,
        "state_changed": 10,
        "k_changed": 11,
        "scheduler_waited": 12,
        "breaker_changed": 13,
        "run_resumed": 14,
        "run_finished": 15,
        "step_abandoned": 16,
        "sample_hedged": 17,
    }
)
TYPE_BY_CODE: Final[Mapping[int, str]] = types.MappingProxyType(
    {code: tag for tag, code in TYPE_CODES.items()}
)

# -- wire constants ------------------------------------------------------------------------

_EXT_REF: Final = 1
_EXT_BACKREF: Final = 2
_EXT_BIGINT: Final = 3

_PAYLOAD_STR: Final = 0
_PAYLOAD_MSGPACK: Final = 1
_STORE_RAW: Final = 0
_STORE_ZSTD: Final = 1 << 2
_STORE_ZSTD_DICT: Final = 2 << 2

INTERN_MIN: Final = 16
"""Strings of at least this many characters, and ``Any`` values of at least this many msgpack
bytes, go to a blob: below it a reference (3 to 10 bytes) saves too little."""

_FLOAT_INT_LIMIT: Final = 2**53
_MSGPACK_INT_MIN: Final = -(2**63)
_MSGPACK_INT_MAX: Final = 2**64 - 1
_MAX_FRAME_CONTENT: Final = 1 << 30
"""A frame claiming more than this is corrupt: the limit keeps a flipped byte from asking the
decompressor for gigabytes."""

_COMPRESS_VALUES_MIN: Final = 96
"""msgpack values shorter than this are not worth a compression attempt: Hanoi states (40-60
bytes of small ints) never shrank, and each attempt cost ~1 us (measured)."""

_ZSTD_LEVEL: Final = 3
"""Level 19 saves ~2 bytes per Hanoi text over level 3 at ~20x the time (measured), and encode
runs on the event loop's thread."""

DICTIONARY_SAMPLES: Final = 1024
"""Strings seen before a dictionary is trained. On Hanoi texts (~140 bytes) 1,024 gives a
dictionary that compresses a text to ~36 bytes (256 samples: ~38), trained in ~40 ms."""
DICTIONARY_SAMPLE_BYTES: Final = 1 << 20
"""...or this many bytes of them, whichever comes first, so long real-model texts (~2 KB) train
after ~500 samples instead of holding 2 MB."""
DICTIONARY_MAX_SIZE: Final = 16 * 1024
"""A trained dictionary is at most this big, and at most 1/8 of the samples' bytes (zstd
recommends ~100x the dictionary in samples; 8x measured as well as 16 KiB on Hanoi)."""
MAX_DICTIONARIES: Final = 8
"""An encoder given this many dictionaries trains no more, so a file holds at most a handful."""
_DICTIONARY_GAIN: Final = 0.9
"""An encoder given dictionaries trains its own only if that is at least 10% smaller on its
samples than the newest given one: reopening a file for the same task adds nothing."""


def _frame_params() -> zstandard.ZstdCompressionParameters:
    # Magicless frames without checksum or dictionary id: 4 + 4 bytes saved a blob (measured:
    # plain zstd 123.4 -> 119.4 bytes a Hanoi text). The content size stays in (1 byte at this
    # size): it lets the decoder allocate once and refuse absurd sizes.
    return zstandard.ZstdCompressionParameters.from_level(
        _ZSTD_LEVEL,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_checksum=0,
        write_content_size=1,
        write_dict_id=0,
    )


# -- field plans ---------------------------------------------------------------------------

_K_STR: Final = 0
_K_SID: Final = 1
_K_FLOAT: Final = 2
_K_OPTFLOAT: Final = 3
_K_INT: Final = 4
_K_BOOL: Final = 5
_K_ANY: Final = 6
_K_TALLY: Final = 7
_K_OPTSTR: Final = 8
_K_UNSETFLOAT: Final = 9

_ENVELOPE: Final = frozenset({"run_id", "seq", "ts", "step", "type"})
_NO_DEFAULT: Final[Any] = object()


class _Field(NamedTuple):
    name: str
    kind: int
    default: Any  # _NO_DEFAULT when required
    allowed: frozenset[str] | None  # Literal values of a str field
    container: type | None  # dict / list for Any-like fields with a concrete shape


class _Plan(NamedTuple):
    cls: type[Event]
    code: int
    is_step: bool
    fields: tuple[_Field, ...]
    required: int  # leading fields without a default


def _field_kind(name: str, tp: Any) -> tuple[int, frozenset[str] | None, type | None]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        return (_K_SID if name == "sample_id" else _K_STR), None, None
    if origin in (typing.Union, types.UnionType) and set(args) == {str, msgspec.UnsetType}:
        return _K_OPTSTR, None, None
    if origin is typing.Literal:
        assert all(isinstance(a, str) for a in args), tp
        return _K_STR, frozenset(args), None
    if tp is float:
        return _K_FLOAT, None, None
    if origin in (typing.Union, types.UnionType) and set(args) == {float, type(None)}:
        return _K_OPTFLOAT, None, None
    if origin in (typing.Union, types.UnionType) and set(args) == {float, msgspec.UnsetType}:
        return _K_UNSETFLOAT, None, None
    if tp is bool:
        return _K_BOOL, None, None
    if tp is int:
        return _K_INT, None, None
    if origin is dict and args == (str, int):
        return _K_TALLY, None, None
    if tp is Any:
        return _K_ANY, None, None
    if origin in (dict, list):
        return _K_ANY, None, origin
    raise TypeError(f"no compact encoding for field {name}: {tp!r}")


def _make_plan(cls: type[Event]) -> _Plan:
    fields: list[_Field] = []
    for info in msgspec.structs.fields(cls):
        if info.name in _ENVELOPE:
            continue
        kind, allowed, container = _field_kind(info.name, info.type)
        if info.default is not msgspec.NODEFAULT:
            default = info.default
        elif info.default_factory is not msgspec.NODEFAULT:
            default = info.default_factory()
        else:
            default = _NO_DEFAULT
        fields.append(_Field(info.name, kind, default, allowed, container))
    required = 0
    for f in fields:
        if f.default is not _NO_DEFAULT:
            break
        required += 1
    # Omitting trailing defaults relies on every defaulted field coming after the required ones.
    assert all(f.default is not _NO_DEFAULT for f in fields[required:]), cls
    tag = event_tag(cls)
    return _Plan(cls, TYPE_CODES[tag], issubclass(cls, StepEvent), tuple(fields), required)


_PLANS: Final[dict[type[Event], _Plan]] = {cls: _make_plan(cls) for cls in EVENT_TYPES}
_PLAN_BY_CODE: Final[dict[int, _Plan]] = {p.code: p for p in _PLANS.values()}
assert set(TYPE_CODES) == {event_tag(cls) for cls in EVENT_TYPES}


def _same(value: Any, default: Any) -> bool:
    """Whether leaving ``value`` out (so decode fills in ``default``) gives back an equal value
    of the same type: ``0`` is not ``0.0`` and ``-0.0`` is not ``0.0`` here."""
    if type(value) is not type(default) or value != default:
        return False
    if type(value) is float:
        return math.copysign(1.0, value) == math.copysign(1.0, default)
    return True


# -- small helpers -------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptEventError("truncated dictionary id in blob")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos


def _ref(blob_id: int) -> msgspec.msgpack.Ext:
    # fixext 1/2/4/8: 2 header bytes; 3 or 5-7 data bytes would need the 3-byte ext8 header.
    if blob_id < 0x100:
        return msgspec.msgpack.Ext(_EXT_REF, blob_id.to_bytes(1, "little"))
    if blob_id < 0x10000:
        return msgspec.msgpack.Ext(_EXT_REF, blob_id.to_bytes(2, "little"))
    if blob_id < 0x100000000:
        return msgspec.msgpack.Ext(_EXT_REF, blob_id.to_bytes(4, "little"))
    return msgspec.msgpack.Ext(_EXT_REF, blob_id.to_bytes(8, "little"))


_BACKREF_COUNT: Final = 256
_BACKREFS: Final = tuple(
    msgspec.msgpack.Ext(_EXT_BACKREF, bytes([i])) for i in range(_BACKREF_COUNT)
)


# -- encoder -------------------------------------------------------------------------------


class EncodedEvent(NamedTuple):
    """One event ready for the store: the row's columns and the blob rows it adds."""

    type_code: int
    step: int | None
    body: bytes
    blobs: list[tuple[int, bytes]]
    """New blob rows (id, data) this event introduced; insert them in the same transaction."""
    digest: bytes
    """What the chain hash covers: the body, then the data of every distinct blob it references,
    in order of first reference."""


class Encoder:
    """Turns events into compact rows. One per store writer; not thread-safe.

    ``next_blob_id`` and ``next_dictionary_id`` continue an existing file (max id + 1);
    ``dictionaries`` are the file's dictionaries, the newest (highest id) of which is used for
    compression from the start. The LRU of at most ``lru_entries`` values and ``lru_bytes``
    bytes (values plus their blob data: 2 KB model texts would make 65,536 entries ~170 MB)
    decides what is deduplicated:
    a value is stored again once it has fallen out, which costs bytes, never correctness.

    The LRU assumes every blob it handed out is stored. If a transaction holding blobs is rolled
    back, build a new encoder from the file instead of reusing this one. If :meth:`encode` raises,
    the encoder forgets its LRU itself (the failed event's blobs were never handed out).

    Dictionary rule: an encoder trains at most one dictionary in its lifetime, from the first
    :data:`DICTIONARY_SAMPLES` interned strings (or :data:`DICTIONARY_SAMPLE_BYTES` of them).
    Given no dictionary it adopts what it trained. Given some, it adopts its own only if that
    compresses its samples at least 10% better than the newest given one, and never once the
    file holds :data:`MAX_DICTIONARIES` (nor with ``train_dictionary=False``). An adopted
    dictionary is used at once, possibly by the very event whose string completed the samples:
    call :meth:`take_new_dictionaries` after every :meth:`encode` and insert its rows before
    that event's blobs.
    """

    def __init__(
        self,
        *,
        next_blob_id: int = 1,
        next_dictionary_id: int = 1,
        dictionaries: Mapping[int, bytes] | None = None,
        lru_entries: int = 65536,
        lru_bytes: int = 64 << 20,
        train_dictionary: bool = True,
    ) -> None:
        if next_blob_id < 1:
            raise InvalidOptionError("next_blob_id", "at least 1", next_blob_id)
        if next_dictionary_id < 1:
            raise InvalidOptionError("next_dictionary_id", "at least 1", next_dictionary_id)
        if lru_entries < 1:
            raise InvalidOptionError("lru_entries", "at least 1", lru_entries)
        self._next_blob_id = next_blob_id
        self._next_dictionary_id = next_dictionary_id
        self._lru_entries = lru_entries
        self._lru_budget = lru_bytes
        self._lru_size = 0
        # value (str for strings, msgpack bytes for Any values) -> (id, data, reference)
        self._lru: OrderedDict[str | bytes, _Hit] = OrderedDict()
        self._plain = zstandard.ZstdCompressor(compression_params=_frame_params())
        self._dict_id: int | None = None
        self._dict_prefix = b""
        self._dict_compressor: zstandard.ZstdCompressor | None = None
        self._new_dictionaries: list[tuple[int, bytes]] = []
        given = dict(dictionaries or {})
        if given:
            newest = max(given)
            self._use_dictionary(newest, given[newest])
        trains = train_dictionary and len(given) < MAX_DICTIONARIES
        self._training: list[bytes] | None = [] if trains else None
        self._training_bytes = 0
        # Per-event scratch: None until the event references a blob, so most events skip it.
        self._ids: dict[int, int] | None = None
        self._datas: list[bytes] = []
        self._fresh: list[tuple[int, bytes]] = []
        self._sample_ids: dict[str, tuple[int | None, int]] = {}
        self._encoders = {cls: _make_encoder(plan, self) for cls, plan in _PLANS.items()}

    # -- public ----------------------------------------------------------------------------

    def encode(self, event: Event) -> EncodedEvent:
        """Encode one event. Raises :class:`UnencodableEventError` (a ``TypeError``) for a
        value its field type cannot hold."""
        encode = self._encoders.get(type(event))
        if encode is None:
            raise UnencodableEventError(f"not an event type: {type(event).__name__}")
        try:
            return encode(event)
        except BaseException:
            # Blobs made for this event were never handed out, yet the LRU knows them.
            self._ids = None
            self._lru.clear()
            self._lru_size = 0
            raise

    def take_new_dictionaries(self) -> list[tuple[int, bytes]]:
        """Dictionaries adopted since the last call, as (id, data) rows. Insert them before
        the blobs of the event just encoded, in the same transaction or an earlier one."""
        out, self._new_dictionaries = self._new_dictionaries, []
        return out

    @property
    def has_new_dictionaries(self) -> bool:
        """Whether :meth:`take_new_dictionaries` has rows to give (rarely: check this first)."""
        return bool(self._new_dictionaries)

    @property
    def next_blob_id(self) -> int:
        """The id the next new blob will get."""
        return self._next_blob_id

    @property
    def next_dictionary_id(self) -> int:
        """The id the next adopted dictionary will get."""
        return self._next_dictionary_id

    @property
    def dictionary_id(self) -> int | None:
        """The dictionary new blobs are compressed with, if any."""
        return self._dict_id

    # -- values (called by the generated per-type encoders) --------------------------------

    def _string(self, value: str) -> msgspec.msgpack.Ext:
        ids = self._ids
        if ids is None:
            ids = self._ids = {}
            self._datas = []
            self._fresh = []
        hit = self._lru.get(value)
        if hit is None:
            raw = value.encode("utf-8")
            hit = self._new_blob(value, self._store(_PAYLOAD_STR, raw))
            if self._training is not None:
                self._learn(raw)
        else:
            self._lru.move_to_end(value)
        # _reference inlined: this is the hottest path of the encoder.
        blob_id = hit[0]
        index = ids.get(blob_id)
        if index is None:
            ids[blob_id] = len(ids)
            self._datas.append(hit[1])
        elif index < _BACKREF_COUNT:
            return _BACKREFS[index]
        return hit[2]

    def _any(self, value: Any) -> Any:
        if value is None or type(value) is bool:
            return value
        try:
            packed = _msgpack_encode(value)
        except OverflowError:  # an int beyond 64 bits somewhere inside: spell those out
            packed = _msgpack_encode(_widen(value))
        if len(packed) < INTERN_MIN:
            return msgspec.Raw(packed)
        ids = self._ids
        if ids is None:
            ids = self._ids = {}
            self._datas = []
            self._fresh = []
        hit = self._lru.get(packed)
        if hit is None:
            hit = self._new_blob(packed, self._store(_PAYLOAD_MSGPACK, packed))
        else:
            self._lru.move_to_end(packed)
        return self._reference(ids, hit)

    def _tally(self, value: Any, name: str) -> list[Any]:
        if type(value) is not dict:
            raise _type_error(name, "dict[str, int]", value)
        flat: list[Any] = []
        for key, count in value.items():
            if type(key) is not str:
                raise _type_error(name, "dict[str, int]", key)
            if type(count) is int:
                if not _MSGPACK_INT_MIN <= count <= _MSGPACK_INT_MAX:
                    count = _big(count)
            elif type(count) is not bool:
                raise _type_error(name, "dict[str, int]", count)
            flat.append(key if len(key) < INTERN_MIN else self._string(key))
            flat.append(count)
        return flat

    # -- blobs -----------------------------------------------------------------------------

    def _reference(self, ids: dict[int, int], hit: _Hit) -> msgspec.msgpack.Ext:
        blob_id, data, ref = hit
        index = ids.get(blob_id)
        if index is None:
            ids[blob_id] = len(ids)
            self._datas.append(data)
        elif index < _BACKREF_COUNT:
            return _BACKREFS[index]
        # Beyond 256 distinct blobs in one body a repeat is a plain reference again; the decoder
        # counts each blob once too, so both sides agree on the back-reference indexes.
        return ref

    def _new_blob(self, key: str | bytes, data: bytes) -> _Hit:
        blob_id = self._next_blob_id
        self._next_blob_id += 1
        hit: _Hit = _NEW(_Hit, (blob_id, data, _ref(blob_id)))
        lru = self._lru
        lru[key] = hit
        self._lru_size += len(key) + len(data)
        while len(lru) > self._lru_entries or (self._lru_size > self._lru_budget and len(lru) > 1):
            old_key, old = lru.popitem(last=False)
            self._lru_size -= len(old_key) + len(old.data)
        self._fresh.append((blob_id, data))
        return hit

    def _store(self, payload: int, raw: bytes) -> bytes:
        """The smallest of: as is, plain zstd (before any dictionary), zstd with it."""
        if len(raw) >= (INTERN_MIN if payload == _PAYLOAD_STR else _COMPRESS_VALUES_MIN):
            compressor = self._dict_compressor
            if compressor is not None:
                framed = compressor.compress(raw)
                if len(framed) + len(self._dict_prefix) < len(raw):
                    return _KIND[payload | _STORE_ZSTD_DICT] + self._dict_prefix + framed
            else:
                framed = self._plain.compress(raw)
                if len(framed) < len(raw):
                    return _KIND[payload | _STORE_ZSTD] + framed
        return _KIND[payload | _STORE_RAW] + raw

    # -- dictionaries ----------------------------------------------------------------------

    def _use_dictionary(self, dictionary_id: int, data: bytes) -> None:
        self._dict_compressor = _dict_compressor(zstandard.ZstdCompressionDict(data))
        self._dict_id = dictionary_id
        self._dict_prefix = _varint(dictionary_id)

    def _learn(self, raw: bytes) -> None:
        assert self._training is not None
        self._training.append(raw)
        self._training_bytes += len(raw)
        if (
            len(self._training) < DICTIONARY_SAMPLES
            and self._training_bytes < DICTIONARY_SAMPLE_BYTES
        ):
            return
        samples, self._training = self._training, None  # one attempt per lifetime
        size = min(DICTIONARY_MAX_SIZE, self._training_bytes // 8)
        try:
            trained = zstandard.train_dictionary(size, list[Any](samples), level=_ZSTD_LEVEL)
        except zstandard.ZstdError:  # too few or too uniform samples: no dictionary, then
            return
        data = trained.as_bytes()
        new = _dict_compressor(trained)
        old = self._dict_compressor
        if old is not None:
            old_size = sum(len(old.compress(s)) for s in samples)
            new_size = sum(len(new.compress(s)) for s in samples)
            if new_size > _DICTIONARY_GAIN * old_size:
                return
        dictionary_id = self._next_dictionary_id
        self._next_dictionary_id += 1
        self._dict_compressor = new
        self._dict_id = dictionary_id
        self._dict_prefix = _varint(dictionary_id)
        self._new_dictionaries.append((dictionary_id, data))


class _Hit(NamedTuple):
    blob_id: int
    data: bytes
    ref: msgspec.msgpack.Ext


_NEW: Final = tuple.__new__
"""Builds a NamedTuple without its Python-level ``__new__`` (0.86 -> 0.42 us, measured)."""
_KIND: Final = tuple(bytes((kind,)) for kind in range(16))
"""The one-byte kind prefix of a blob, by kind."""


def _dict_compressor(zdict: zstandard.ZstdCompressionDict) -> zstandard.ZstdCompressor:
    params = _frame_params()
    zdict.precompute_compress(compression_params=params)
    return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)


def _type_error(name: str, expected: str, value: Any) -> UnencodableEventError:
    return UnencodableEventError(
        f"{name} must be a {expected}, got {type(value).__name__}: {value!r:.80}"
    )


_SID_CACHE: Final = 4096


def _parse_sample_id(sample_id: str) -> tuple[int | None, int]:
    """(step, ordinal) if ``sample_id`` is exactly ``f"{step}:{ordinal}"`` (ints, ordinal under
    2**63), else (None, 0): only then does decode rebuild the identical string."""
    head, sep, tail = sample_id.partition(":")
    if sep and tail.isdigit() and tail.isascii() and len(tail) < 19:
        try:
            step, ordinal = int(head), int(tail)
        except ValueError:
            return None, 0
        if f"{step}:{ordinal}" == sample_id:
            return step, ordinal
    return None, 0


def _big(value: int) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(_EXT_BIGINT, str(value).encode("ascii"))


_msgpack_encode: Final[Callable[[Any], bytes]] = msgspec.msgpack.Encoder().encode


def _widen(value: Any) -> Any:
    """``value`` with every int that msgpack cannot hold as a big-int ext (dict keys aside:
    an ext is not hashable, so such a key stays and fails to encode)."""
    t = type(value)
    if t is int:
        return value if _MSGPACK_INT_MIN <= value <= _MSGPACK_INT_MAX else _big(value)
    if t is list or t is tuple:
        return [_widen(v) for v in value]
    if t is dict:
        return {k: _widen(v) for k, v in value.items()}
    return value


# -- generated per-type code ---------------------------------------------------------------
#
# Encoding and decoding are a loop over a type's fields with a branch per field kind. Written
# as a generic loop that costs ~14 us an event in CPython (measured on Hanoi); unrolled per type
# at import, with the branches resolved, it is a fraction of that. The generated source is
# plain and small; _encoder_source(plan) / _decoder_source(plan) show it.


def _default_test(var: str, f: _Field, i: int) -> str:
    """Source of 'var is exactly f.default', so leaving it out decodes to an identical value."""
    d = f.default
    if d is None:
        return f"{var} is None"
    test = f"type({var}) is DT{i} and {var} == D{i}"
    if type(d) is float:
        test += f" and copysign(1.0, {var}) == {math.copysign(1.0, d)!r}"
    return test


def _encoder_source(plan: _Plan) -> str:
    fields = plan.fields
    n = len(fields)
    out = ["def enc(ev):"]
    names = ", ".join(f"o{i}" for i in range(n))
    out.append(f"    {names} = GET(ev)")  # attrgetter of one name returns the value itself
    out.append("    step = ev.step" if plan.is_step else "    step = None")
    for i, f in enumerate(fields):
        o, v, name = f"o{i}", f"v{i}", repr(f.name)
        k = f.kind
        if k in (_K_STR, _K_SID):
            out.append(f"    if type({o}) is not str: raise TE({name}, 'str', {o})")
            if f.allowed is not None:
                out.append(f"    if {o} not in AL{i}: raise TE({name}, 'Literal', {o})")
            if k == _K_SID:
                # A sample id recurs in ~4 events: remember its parse (bounded, cleared when full).
                out += [
                    f"    sid = SIDS.get({o})",
                    "    if sid is None:",
                    f"        sid = SIDS[{o}] = SID({o})",
                    "        if len(SIDS) > SIDMAX: SIDS.clear()",
                    "    if sid[0] == step and type(step) is int:",
                    f"        {v} = sid[1]",
                    f"    elif len({o}) >= MIN: {v} = S({o})",
                    f"    else: {v} = {o}",
                ]
            else:
                out.append(f"    {v} = S({o}) if len({o}) >= MIN else {o}")
        elif k in (_K_FLOAT, _K_OPTFLOAT, _K_UNSETFLOAT):
            out += [
                f"    {v} = {o}",
                f"    tv = type({o})",
                "    if tv is float:",
                f"        if {o}.is_integer() and -FL < {o} < FL"
                f" and ({o} or copysign(1.0, {o}) > 0):",
                f"            {v} = int({o})",
                "    elif tv is int:",
                f"        if not IMIN <= {o} <= IMAX: {v} = BIG({o})",
            ]
            if k == _K_OPTFLOAT:
                out.append(f"    elif {o} is not None: raise TE({name}, 'float | None', {o})")
            elif k == _K_UNSETFLOAT:
                out.append(f"    elif {o} is UNSET: {v} = None")
                out.append(f"    else: raise TE({name}, 'float | UnsetType', {o})")
            else:
                out.append(f"    else: raise TE({name}, 'float', {o})")
        elif k == _K_INT:
            out += [
                f"    {v} = {o}",
                f"    if type({o}) is int:",
                f"        if not IMIN <= {o} <= IMAX: {v} = BIG({o})",
                f"    elif type({o}) is not bool: raise TE({name}, 'int', {o})",
            ]
        elif k == _K_BOOL:
            out.append(f"    if type({o}) is not bool: raise TE({name}, 'bool', {o})")
            out.append(f"    {v} = {o}")
        elif k == _K_TALLY:
            out.append(f"    {v} = T({o}, {name})")
        elif k == _K_OPTSTR:
            out += [
                f"    if {o} is UNSET: {v} = None",
                f"    elif type({o}) is str: {v} = {o}",
                f"    else: raise TE({name}, 'str | UnsetType', {o})",
            ]
        else:
            if f.container is not None:
                out.append(
                    f"    if not isinstance({o}, C{i}): raise TE({name}, C{i}.__name__, {o})"
                )
            out.append(f"    {v} = A({o})")
    values = ", ".join(f"v{i}" for i in range(n))
    out.append(f"    out = [{values}]")
    # Trailing fields equal to their defaults are left off, last first.
    indent = "    "
    for i in range(n - 1, plan.required - 1, -1):
        out.append(f"{indent}if {_default_test(f'o{i}', fields[i], i)}:")
        indent += "    "
        out.append(f"{indent}del out[{i}]")
    out += [
        "    body = PACK(out)",
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (0.67 -> ~0.15 us).
        "    if E._ids is None:",
        "        return NEW(EE, (CODE, step, body, [], body))",
        "    E._ids = None",
        "    return NEW(EE, (CODE, step, body, E._fresh, body + b''.join(E._datas)))",
    ]
    return "\n".join(out) + "\n"


def _namespace(plan: _Plan) -> dict[str, Any]:
    ns: dict[str, Any] = {
        "copysign": math.copysign,
        "MIN": INTERN_MIN,
        "FL": _FLOAT_INT_LIMIT,
        "IMIN": _MSGPACK_INT_MIN,
        "IMAX": _MSGPACK_INT_MAX,
        "BIG": _big,
        "SID": _parse_sample_id,
        "SIDMAX": _SID_CACHE,
        "TE": _type_error,
        "CODE": plan.code,
        "CLS": plan.cls,
        "UNSET": msgspec.UNSET,
    }
    for i, f in enumerate(plan.fields):
        ns[f"AL{i}"] = f.allowed
        ns[f"C{i}"] = f.container
        ns[f"D{i}"] = f.default
        ns[f"DT{i}"] = type(f.default)
    return ns


def _make_encoder(plan: _Plan, encoder: Encoder) -> Callable[[Event], EncodedEvent]:
    ns = _namespace(plan)
    ns.update(
        GET=operator.attrgetter(*(f.name for f in plan.fields)),
        S=encoder._string,
        A=encoder._any,
        T=encoder._tally,
        PACK=_msgpack_encode,
        EE=EncodedEvent,
        NEW=tuple.__new__,
        SIDS=encoder._sample_ids,
        E=encoder,
    )
    exec(_ENCODER_CODE[plan.code], ns)
    fn: Callable[[Event], EncodedEvent] = ns["enc"]
    return fn


_ENCODER_CODE: Final = {
    p.code: compile(_encoder_source(p), f"<compact encoder {p.cls.__name__}>", "exec")
    for p in _PLANS.values()
}


# -- decoder -------------------------------------------------------------------------------

_CACHE_ENTRIES: Final = 1024
_NO_BLOBS: Final[Mapping[int, bytes]] = types.MappingProxyType({})


class Decoder:
    """Turns stored rows back into events.

    Holds the file's dictionaries and a small bounded cache of decoded blobs, keyed by the
    blob's bytes, so it can never answer for other data. Not thread-safe: use one per reading
    thread or connection.
    """

    def __init__(self, dictionaries: Mapping[int, bytes] | None = None) -> None:
        self._dictionaries: dict[int, bytes] = {}
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        self._plain = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
        self._cache: dict[bytes, tuple[int, Any]] = {}
        self._blobs: Mapping[int, bytes] = _NO_BLOBS
        self._seen: list[int] = []
        self._body = msgspec.msgpack.Decoder(ext_hook=self._ext)
        self._scan = msgspec.msgpack.Decoder(ext_hook=self._scan_ext)
        for dictionary_id, data in (dictionaries or {}).items():
            self.add_dictionary(dictionary_id, data)

    def add_dictionary(self, dictionary_id: int, data: bytes) -> None:
        """Make a dictionary from the file's ``dictionaries`` table known."""
        self._dictionaries[dictionary_id] = bytes(data)
        self._decompressors.pop(dictionary_id, None)

    def refs(self, body: bytes) -> list[int]:
        """The distinct blob ids ``body`` references, in order of first reference."""
        self._seen = []
        try:
            self._scan.decode(body)
        except CorruptEventError:
            raise
        except Exception as exc:
            raise CorruptEventError(f"bad event body: {exc}") from exc
        return list(dict.fromkeys(self._seen))

    def digest(self, body: bytes, blobs: Mapping[int, bytes]) -> bytes:
        """:attr:`EncodedEvent.digest` recomputed from stored data, for integrity checks."""
        parts = [body]
        for blob_id in self.refs(body):
            data = blobs.get(blob_id)
            if data is None:
                raise CorruptEventError(f"missing blob {blob_id}")
            parts.append(bytes(data))
        return b"".join(parts)

    def decode(
        self,
        *,
        run_id: str,
        seq: int,
        ts: float,
        type_code: int,
        step: int | None,
        body: bytes,
        blobs: Mapping[int, bytes],
    ) -> AnyEvent:
        """Rebuild one event, or raise :class:`~events.CorruptEventError`."""
        entry = _DECODERS.get(type_code)
        if entry is None:
            raise CorruptEventError(f"unknown event type code {type_code!r}")
        build, is_step = entry
        if is_step:
            if type(step) is not int:
                raise CorruptEventError(f"event type code {type_code} needs a step, got {step!r}")
        elif step is not None:
            raise CorruptEventError(f"event type code {type_code} has no step, got {step!r}")
        self._blobs = blobs
        self._seen = []
        try:
            values = self._body.decode(body)
            if type(values) is not list:
                raise CorruptEventError("event body is not an array")
            return build(values, run_id, seq, ts, step)
        except CorruptEventError:
            raise
        except Exception as exc:
            raise CorruptEventError(f"bad event body: {exc!r}") from exc
        finally:
            self._blobs = _NO_BLOBS

    # -- ext hooks -------------------------------------------------------------------------

    def _scan_ext(self, code: int, data: memoryview) -> Any:
        if code == _EXT_REF:
            self._seen.append(_ref_id(data))
        return None

    def _ext(self, code: int, data: memoryview) -> Any:
        # One call per reference on every read: _ref_id and the blob lookup are inlined.
        if code == _EXT_REF:
            if len(data) not in _REF_SIZES:
                raise CorruptEventError("bad blob reference")
            blob_id = int.from_bytes(data, "little")
            self._seen.append(blob_id)
        elif code == _EXT_BACKREF:
            if len(data) != 1 or data[0] >= len(self._seen):
                raise CorruptEventError("bad back reference")
            blob_id = self._seen[data[0]]
        else:
            return _value_ext(code, data)
        found = self._blobs.get(blob_id)
        if found is None:
            raise CorruptEventError(f"missing blob {blob_id}")
        data_ = bytes(found)
        cache = self._cache
        cached = cache.get(data_)
        if cached is not None and cached[0] == _PAYLOAD_STR:
            return cached[1]
        return self._blob(data_, cached)

    def _blob(self, data: bytes, cached: tuple[int, Any] | None) -> Any:
        cache = self._cache
        if cached is None:
            cached = self._unpack(data)
            if len(cache) >= _CACHE_ENTRIES:
                del cache[next(iter(cache))]
            cache[data] = cached
        payload, value = cached
        if payload == _PAYLOAD_STR:
            return value
        # Decoded msgpack values are mutable: decode a fresh copy per reference, so two events
        # (or two fields) never share one list or dict.
        return _msgpack_decode_value(value)

    def _unpack(self, data: bytes) -> tuple[int, Any]:
        """(payload kind, the str or the msgpack bytes) of one blob's data."""
        if not data:
            raise CorruptEventError("empty blob")
        kind = data[0]
        payload = kind & 0b11
        store = kind & ~0b11
        if payload > _PAYLOAD_MSGPACK:
            raise CorruptEventError(f"bad blob kind {kind}")
        if store == _STORE_RAW:
            raw = data[1:]
        elif store == _STORE_ZSTD:
            raw = self._decompress(self._plain, data[1:])
        elif store == _STORE_ZSTD_DICT:
            dictionary_id, pos = _read_varint(data, 1)
            raw = self._decompress(self._decompressor(dictionary_id), data[pos:])
        else:
            raise CorruptEventError(f"bad blob kind {kind}")
        if payload == _PAYLOAD_STR:
            return payload, raw.decode("utf-8")
        # Validate once here, so a bad payload fails the same way on every reference.
        _msgpack_decode_value(raw)
        return payload, raw

    def _decompressor(self, dictionary_id: int) -> zstandard.ZstdDecompressor:
        found = self._decompressors.get(dictionary_id)
        if found is None:
            data = self._dictionaries.get(dictionary_id)
            if data is None:
                raise CorruptEventError(f"unknown zstd dictionary {dictionary_id}")
            try:
                found = zstandard.ZstdDecompressor(
                    dict_data=zstandard.ZstdCompressionDict(data),
                    format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                )
            except zstandard.ZstdError as exc:
                raise CorruptEventError(f"bad zstd dictionary {dictionary_id}") from exc
            self._decompressors[dictionary_id] = found
        return found

    @staticmethod
    def _decompress(decompressor: zstandard.ZstdDecompressor, frame: bytes) -> bytes:
        try:
            params = zstandard.get_frame_parameters(frame, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
            if not 0 <= params.content_size <= _MAX_FRAME_CONTENT:
                raise CorruptEventError("zstd frame of unknown or absurd size")
            out: bytes = decompressor.decompress(frame)
        except zstandard.ZstdError as exc:
            raise CorruptEventError(f"bad zstd frame: {exc}") from exc
        return out


def _value_ext(code: int, data: memoryview) -> Any:
    if code == _EXT_BIGINT:
        text = bytes(data)
        if not text.lstrip(b"-").isdigit() or not text[-1:].isdigit():
            raise CorruptEventError("bad big int")
        return int(text)
    raise CorruptEventError(f"unknown ext code {code}")


_msgpack_decode_value: Final[Callable[[bytes], Any]] = msgspec.msgpack.Decoder(
    ext_hook=_value_ext
).decode


_REF_SIZES: Final = frozenset({1, 2, 4, 8})


def _ref_id(data: memoryview) -> int:
    if len(data) not in _REF_SIZES:
        raise CorruptEventError("bad blob reference")
    return int.from_bytes(data, "little")


def _bad(name: str, value: Any) -> CorruptEventError:
    return CorruptEventError(f"{name}: unexpected {type(value).__name__} {value!r:.80}")


def _untally(value: Any, name: str) -> dict[str, int]:
    if type(value) is list and len(value) == 2:  # most tallies have one candidate
        key, count = value
        if type(key) is str and type(count) is int:
            return {key: count}
    if type(value) is not list or len(value) % 2:
        raise _bad(name, value)
    keys = value[0::2]
    counts = value[1::2]
    out = dict(zip(keys, counts, strict=True))
    if len(out) != len(keys):
        raise _bad(name, value)
    for key, count in out.items():
        if type(key) is not str or (type(count) is not int and type(count) is not bool):
            raise _bad(name, value)
    return out


def _decoder_source(plan: _Plan) -> str:
    fields = plan.fields
    n = len(fields)
    out = [
        "def dec(values, run_id, seq, ts, step):",
        "    n = len(values)",
        f"    if n < {plan.required} or n > {n}: raise CorruptEventError("
        f"'{plan.cls.__name__} body has ' + str(n) + ' fields')",
    ]
    for i, f in enumerate(fields):
        x, name = f"x{i}", repr(f.name)
        if i < plan.required:
            out.append(f"    {x} = values[{i}]")
        elif isinstance(f.default, dict | list):  # a default_factory: a fresh one each time
            out.append(f"    {x} = values[{i}] if n > {i} else DT{i}()")
        else:
            out.append(f"    {x} = values[{i}] if n > {i} else D{i}")
        k = f.kind
        if k == _K_STR:
            out.append(f"    if type({x}) is not str: raise BAD({name}, {x})")
            if f.allowed is not None:
                out.append(f"    if {x} not in AL{i}: raise BAD({name}, {x})")
        elif k == _K_SID:
            out += [
                f"    if type({x}) is int and {x} >= 0: {x} = f'{{step}}:{{{x}}}'",
                f"    elif type({x}) is not str: raise BAD({name}, {x})",
            ]
        elif k in (_K_FLOAT, _K_OPTFLOAT):
            none = f" and {x} is not None" if k == _K_OPTFLOAT else ""
            out += [
                f"    if type({x}) is int: {x} = float({x})",
                f"    elif type({x}) is not float{none}: raise BAD({name}, {x})",
            ]
        elif k == _K_UNSETFLOAT:
            out += [
                f"    if {x} is None: {x} = UNSET",
                f"    elif type({x}) is int: {x} = float({x})",
                f"    elif type({x}) is not float and {x} is not UNSET: raise BAD({name}, {x})",
            ]
        elif k == _K_INT:
            out.append(
                f"    if type({x}) is not int and type({x}) is not bool: raise BAD({name}, {x})"
            )
        elif k == _K_BOOL:
            out.append(f"    if type({x}) is not bool: raise BAD({name}, {x})")
        elif k == _K_TALLY:
            out.append(f"    {x} = UNTALLY({x}, {name})")
        elif k == _K_OPTSTR:
            out += [
                f"    if {x} is None: {x} = UNSET",
                f"    elif type({x}) is not str and {x} is not UNSET: raise BAD({name}, {x})",
            ]
        elif f.container is not None:
            out.append(f"    if not isinstance({x}, C{i}): raise BAD({name}, {x})")
    args = ["run_id=run_id", "seq=seq", "ts=ts"]
    if plan.is_step:
        args.append("step=step")
    args += [f"{f.name}=x{i}" for i, f in enumerate(fields)]
    out.append(f"    return CLS({', '.join(args)})")
    return "\n".join(out) + "\n"


def _make_decoder(plan: _Plan) -> Callable[..., AnyEvent]:
    ns = _namespace(plan)
    ns.update(CorruptEventError=CorruptEventError, BAD=_bad, UNTALLY=_untally)
    exec(compile(_decoder_source(plan), f"<compact decoder {plan.cls.__name__}>", "exec"), ns)
    fn: Callable[..., AnyEvent] = ns["dec"]
    return fn


_DECODERS: Final[dict[int, tuple[Callable[..., AnyEvent], bool]]] = {
    p.code: (_make_decoder(p), p.is_step) for p in _PLANS.values()
}
