"""Typed events of maker runs and the append-only SQLite log that holds them.

This package is the bottom layer: it imports nothing from :mod:`maker` or :mod:`replay`.
"""

from ._codec import canonical_json, decode, encode, to_dict
from ._errors import (
    CorruptEventError,
    EventLogError,
    LogClosedError,
    NotALogError,
    SchemaVersionError,
    SequenceError,
    UnknownRunError,
)
from ._log import APPLICATION_ID, EventLog, LogStatistics, RunInfo, chain_hash
from ._types import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    AnyEvent,
    Event,
    RedFlagged,
    RunFinished,
    RunStarted,
    RunStatus,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepDecided,
    StepEvent,
    StepStarted,
    VoteCounted,
    event_tag,
)

__all__ = [
    "APPLICATION_ID",
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "AnyEvent",
    "CorruptEventError",
    "Event",
    "EventLog",
    "EventLogError",
    "LogClosedError",
    "LogStatistics",
    "NotALogError",
    "RedFlagged",
    "RunFinished",
    "RunInfo",
    "RunStarted",
    "RunStatus",
    "SampleCancelled",
    "SampleFailed",
    "SampleReceived",
    "SampleRequested",
    "SchemaVersionError",
    "SequenceError",
    "StateChanged",
    "StepDecided",
    "StepEvent",
    "StepStarted",
    "UnknownRunError",
    "VoteCounted",
    "canonical_json",
    "chain_hash",
    "decode",
    "encode",
    "event_tag",
    "to_dict",
]
