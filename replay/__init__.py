"""Turn logs into answers: rebuild what a run did from its events alone."""

from ._fold import RunSummary, summarize

__all__ = ["RunSummary", "summarize"]
