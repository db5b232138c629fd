"""The event types and their codec: round-trips, tags, immutability, canonical JSON."""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import events
from events import (
    EVENT_TYPES,
    AnyEvent,
    CorruptEventError,
    Event,
    EventLogError,
    RunFinished,
    RunStarted,
    StepEvent,
    canonical_json,
    decode,
    encode,
    event_tag,
    to_dict,
)

DOCUMENTED_TAGS = {
    "run_started": events.RunStarted,
    "step_started": events.StepStarted,
    "sample_requested": events.SampleRequested,
    "sample_received": events.SampleReceived,
    "sample_failed": events.SampleFailed,
    "sample_cancelled": events.SampleCancelled,
    "red_flagged": events.RedFlagged,
    "vote_counted": events.VoteCounted,
    "step_decided": events.StepDecided,
    "step_abandoned": events.StepAbandoned,
    "sample_hedged": events.SampleHedged,
    "state_changed": events.StateChanged,
    "scheduler_waited": events.SchedulerWaited,
    "breaker_changed": events.BreakerChanged,
    "run_resumed": events.RunResumed,
    "k_changed": events.KChanged,
    "run_finished": events.RunFinished,
}

# -- strategies ----------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=30)

JSON_SCALARS: st.SearchStrategy[Any] = st.none() | st.booleans() | INT64 | FINITE | TEXT
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy of JSON-compatible values of a field's type."""
    if tp is Any:
        return JSON_VALUES
    if tp is str:
        return TEXT
    if tp is bool:
        return st.booleans()
    if tp is int:
        return INT64
    if tp is float:
        return FINITE
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is msgspec.UnsetType:
        return st.just(msgspec.UNSET)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else strategy_for(a) for a in args))
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is dict:
        assert args[0] is str
        return st.dictionaries(TEXT, strategy_for(args[1]), max_size=4)
    raise AssertionError(f"no strategy for field type {tp!r}")


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Events of ``cls`` with every field drawn; fields with defaults are sometimes left out."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in msgspec.structs.fields(cls):
        strategy = strategy_for(field.type)
        if field.required:
            required[field.name] = strategy
        else:
            optional[field.name] = strategy
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


ANY_EVENT: st.SearchStrategy[Event] = st.one_of(*(event_strategy(cls) for cls in EVENT_TYPES))


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# -- round-trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_every_type(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(event_strategy(cls))
    blob = encode(event)
    back = decode(blob)
    assert type(back) is cls
    assert back == event
    # Decoding text works the same as bytes, and re-encoding is byte-identical.
    assert decode(blob.decode()) == event
    assert encode(back) == blob


@settings(max_examples=200, deadline=None)
@given(event=ANY_EVENT)
def test_encoding_is_tagged_json(event: Event) -> None:
    blob = encode(event)
    as_json = json.loads(blob)
    tag = event_tag(type(event))
    # The tag comes first, so a reader can dispatch on a prefix of the text.
    assert blob.startswith(b'{"type":"' + tag.encode() + b'"')
    assert as_json["type"] == tag
    names = {f.name for f in msgspec.structs.fields(type(event))}
    if type(event).__struct_config__.omit_defaults:
        # A first, decided start of a step writes what it wrote before pipelining existed.
        names -= {
            f.name
            for f in msgspec.structs.fields(type(event))
            if f.default is not msgspec.NODEFAULT and getattr(event, f.name) == f.default
        }
    # An unset field (a provider's response id when there is none) is left out, as before it
    # existed.
    names -= {
        f.name
        for f in msgspec.structs.fields(type(event))
        if getattr(event, f.name) is msgspec.UNSET
    }
    assert set(as_json) == {"type", *names}
    assert to_dict(event) == as_json


def test_defaults_fill_missing_fields_on_decode() -> None:
    """New fields get defaults, so an event written before a field existed still decodes."""
    old = (
        b'{"type":"run_finished","run_id":"r","seq":3,"ts":1.5,'
        b'"status":"failed","steps":2,"samples":9}'
    )
    event = decode(old)
    assert event == RunFinished(run_id="r", seq=3, ts=1.5, status="failed", steps=2, samples=9)
    assert isinstance(event, RunFinished)
    assert (event.red_flags, event.reason, event.wall_s) == (0, "", 0.0)


# -- tags ----------------------------------------------------------------------------------


def test_tags_are_the_documented_snake_case_names() -> None:
    tags = {event_tag(cls): cls for cls in EVENT_TYPES}
    assert tags == DOCUMENTED_TAGS
    for tag, cls in tags.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", tag), tag
        assert tag == snake_case(cls.__name__)


def test_event_types_are_the_union() -> None:
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES)) == len(DOCUMENTED_TAGS)
    assert set(typing.get_args(AnyEvent)) == set(EVENT_TYPES)
    for cls in EVENT_TYPES:
        assert issubclass(cls, Event)


def test_step_events_carry_a_step_and_run_events_do_not() -> None:
    run_level = {RunStarted, RunFinished, events.RunResumed}
    for cls in EVENT_TYPES:
        names = {f.name for f in msgspec.structs.fields(cls)}
        assert {"run_id", "seq", "ts"} <= names
        assert issubclass(cls, StepEvent) == (cls not in run_level)
        assert ("step" in names) == (cls not in run_level)


# -- immutability --------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(event=ANY_EVENT)
def test_events_are_frozen(event: Event) -> None:
    for name in ("run_id", "seq", "ts"):
        with pytest.raises(AttributeError):
            setattr(event, name, getattr(event, name))
    with pytest.raises(AttributeError):
        del event.seq


def test_every_type_is_declared_frozen() -> None:
    classes: tuple[type[Event], ...] = (Event, StepEvent, *EVENT_TYPES)
    for cls in classes:
        assert cls.__struct_config__.frozen, cls.__name__


# -- garbage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b"{}",
        b'{"type":"no_such_event","run_id":"r","seq":0,"ts":0}',
        b'{"type":"sample_cancelled","run_id":"r","seq":0,"ts":0}',  # step, sample_id missing
        b'{"type":"sample_cancelled","run_id":"r","seq":"0","ts":0,"step":1,"sample_id":"1:0"}',
        b'{"type":"run_finished","run_id":"r","seq":0,"ts":0,"status":"great","steps":1,'
        b'"samples":1}',
        b'{"run_id":"r","seq":0,"ts":0,"step":1,"sample_id":"1:0"}',  # no tag
        b'{"type":"sample_cancelled","run_id":"r","seq":0,"ts":0,"step":1,"sample_id":"1:0"',
        "{\"type\": 'step_started'}",
    ],
)
def test_decoding_garbage_raises_corrupt_event_error(garbage: bytes | str) -> None:
    with pytest.raises(CorruptEventError) as info:
        decode(garbage)
    assert isinstance(info.value, EventLogError)
    assert isinstance(info.value.__cause__, msgspec.DecodeError)


@settings(max_examples=100, deadline=None)
@given(event=ANY_EVENT, cut=st.integers(min_value=1))
def test_truncated_encodings_raise_corrupt_event_error(event: Event, cut: int) -> None:
    blob = encode(event)
    with pytest.raises(CorruptEventError):
        decode(blob[: -(1 + cut % len(blob))])


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=200))
def test_random_bytes_raise_corrupt_event_error(blob: bytes) -> None:
    with pytest.raises(CorruptEventError):
        decode(blob)


# -- canonical JSON ------------------------------------------------------------------------


def reordered(value: Any) -> Any:
    """An equal value whose dicts were built in reverse key order, all the way down."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def key_orders(text: str) -> list[list[str]]:
    """The key order of every object in a JSON text."""
    orders: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        orders.append([k for k, _ in pairs])
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return orders


def test_canonical_json_examples() -> None:
    assert canonical_json({"b": 1, "a": [1, 2, {"d": None, "c": True}]}) == (
        '{"a":[1,2,{"c":true,"d":null}],"b":1}'
    )
    assert canonical_json([3, "x"]) == '[3,"x"]'
    assert canonical_json({"move": [1, 0, 2]}) == canonical_json({"move": [1, 0, 2]})
    assert canonical_json({"a": 1}) != canonical_json({"a": 2})
    assert isinstance(canonical_json({}), str)


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES)
def test_canonical_json_is_sorted_compact_and_order_independent(value: Any) -> None:
    text = canonical_json(value)
    assert json.loads(text) == value
    assert canonical_json(reordered(value)) == text
    for keys in key_orders(text):
        assert keys == sorted(keys)


PLAIN_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
PLAIN_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | INT64 | PLAIN_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(PLAIN_TEXT, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=PLAIN_VALUES)
def test_canonical_json_matches_the_standard_compact_sorted_form(value: Any) -> None:
    """Without floats and non-ASCII text, the stdlib's compact sorted form is the same text."""
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert canonical_json(value) == expected
    assert canonical_json(reordered(value)) == expected
