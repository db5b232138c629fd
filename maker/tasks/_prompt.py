"""Given prompts as a task: the answer parser they vote with, and a one-response validator.

These are the pieces behind a voting service that knows nothing of the problem it serves:

- :class:`AnswerParser` reads an answer out of a response, by a regex (the last match wins, as
  in the paper's parser), by a JSON Schema, or both, and red-flags what it cannot read. It never
  repairs a response.
- :class:`PromptTask` turns a list of ``{"system", "user"}`` prompts into a task of one step per
  prompt: one prompt is one error-corrected decision; prompts with known answers are a
  calibration set for :func:`maker.calibrate`.
- :func:`validate_response` runs every red-flag check on one response and reports all the flags
  it raises, not just the first, so that a prompt's author sees everything wrong at once.

The JSON Schema checks use the optional ``jsonschema`` package (``pip install 'maker[schema]'``),
imported only when a schema is given.

Patterns that come from someone else (a request to ``maker serve`` or an MCP tool) are compiled
with ``engine="re2"``: Google's RE2 (``pip install 'maker[re2]'``) matches in time linear in the
text, so no pattern can freeze the event loop; the constructs it cannot run in linear time
(backreferences, lookaround) are refused when the parser is made, with a clear error. Its
``\\w``, ``\\d`` and ``\\s`` are ASCII classes (``\\pL`` and ``\\pN`` cover other scripts).
The engine is part of the task's recorded parameters, so a replay matches with the engine the
run used. No timeout is put around matching: a decision must not depend on timing.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol
from urllib.parse import unquote

import msgspec

from events import canonical_json

from ..core._client import Completion
from ..core._errors import ConfigError, RedFlag, StateError
from ..core._redflags import TRUNCATED_REASONS, RedFlagRules
from ..core._task import Prompt, Task

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

_JSONSCHEMA_MISSING = "needs the jsonschema package: pip install 'maker[schema]'"
_RE2_MISSING = "engine 're2' needs the google-re2 package: pip install 'maker[re2]'"

RegexEngine = Literal["re", "re2"]
"""Which regex engine an :class:`AnswerParser` matches with: Python's ``re``, or RE2 (linear
time, for patterns from untrusted clients)."""


class _Match(Protocol):
    def group(self, name: int | str, /) -> str | None: ...


class _Regex(Protocol):
    """What the parser uses of a compiled pattern; ``re`` and ``re2`` both provide it."""

    @property
    def groups(self) -> int: ...
    @property
    def groupindex(self) -> Mapping[str, int]: ...
    def finditer(self, text: str, /) -> Iterable[_Match]: ...
    def search(self, text: str, /) -> _Match | None: ...


@functools.lru_cache(maxsize=256)
def _compile(pattern: str, engine: RegexEngine, what: str) -> _Regex:
    """``pattern`` compiled by ``engine``; ConfigError naming ``what`` when it does not compile.

    Cached: a schema's ``pattern`` keywords are matched once per answer.
    """
    if engine == "re":
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise ConfigError(what, f"not a valid regex: {exc}") from None
    try:
        import re2
    except ImportError:
        raise ConfigError(what, _RE2_MISSING) from None
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own copy of the error on stderr
    try:
        compiled: _Regex = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ConfigError(
            what,
            f"the linear-time engine (RE2) cannot run it: {_one_line(str(reason), 120)} "
            "(backreferences and lookaround are not supported)",
        ) from None
    return compiled


CHARS_PER_TOKEN = 4
"""The rough rule :func:`validate_response` estimates output tokens by: ``ceil(chars / 4)``.

About right for English prose with the OpenAI and Anthropic tokenizers; code, numbers and other
languages take more tokens per character. Pass the real count when the provider reports it.
"""

_DETAIL_CHARS = 300
"""A red flag's detail is one line of at most this many characters: it goes into every event."""

# A fenced block: an opening ``` line with an optional language tag, up to the next ``` line.
_FENCE = re.compile(r"(?ms)^[ \t]*```[ \t]*([\w+.-]*)[ \t]*\r?\n(.*?)^[ \t]*```[ \t]*$")
_JSON_FENCE_TAGS = frozenset({"", "json"})

_PROMPT_KEYS = ("system", "user", "answer")


def _one_line(text: str, limit: int = _DETAIL_CHARS) -> str:
    """``text`` with its whitespace runs collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _json_copy(where: str, value: object, field_name: str) -> Any:
    """A copy of ``value`` made of JSON builtins only (dict, list, str, int, float, bool, None).

    Raises :class:`ConfigError` naming ``field_name`` for anything JSON cannot hold exactly: a
    task's params are recorded as JSON in ``run_started`` and rebuilt from it on replay, so a
    value that would come back different (a tuple, a set, NaN, a non-string key) is refused here
    rather than silently changed there.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(field_name, f"must be JSON: {where} is {value}, not a JSON number")
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(field_name, f"must be JSON: {where} has a key {key!r}")
            out[key] = _json_copy(f"{where}.{key}", item, field_name)
        return out
    if isinstance(value, list):
        return [_json_copy(f"{where}[{i}]", item, field_name) for i, item in enumerate(value)]
    raise ConfigError(field_name, f"must be JSON: {where} is a {type(value).__name__}")


def _json_value(value: object, field_name: str) -> Any:
    """:func:`_json_copy`, checked to come back equal from JSON text (e.g. no huge integers)."""
    copied = _json_copy("$", value, field_name)
    try:
        again = msgspec.json.decode(msgspec.json.encode(copied))
    except (msgspec.DecodeError, msgspec.EncodeError, ValueError) as exc:
        raise ConfigError(field_name, f"must survive a JSON round trip: {exc}") from exc
    if again != copied:
        raise ConfigError(field_name, "must survive a JSON round trip unchanged")
    return copied


def _schema_validator(schema: dict[str, Any], engine: RegexEngine = "re") -> Validator:
    """A Draft 2020-12 validator for a checked ``schema``; ConfigError naming ``schema``.

    With ``engine="re2"`` the schema's ``pattern`` and ``patternProperties`` keywords match
    with RE2 as well, and each of their patterns must compile with it.
    """
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError as exc:
        raise ConfigError("schema", _JSONSCHEMA_MISSING) from exc
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        problem = _one_line(f"invalid at {exc.json_path}: {exc.message}")
        raise ConfigError("schema", problem) from exc
    _check_refs(schema, schema)
    # No format checker: which formats jsonschema can assert depends on optional packages, and
    # a red flag must not depend on what happens to be installed where a log is replayed.
    if engine == "re":
        return Draft202012Validator(schema)
    for pattern in _schema_patterns(schema):
        _compile(pattern, "re2", "schema")
    return _re2_validator()(schema)


@functools.cache
def _re2_validator() -> type[Validator]:
    """Draft 2020-12 with its two regex keywords matched by RE2 (jsonschema's own use ``re``)."""
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(validator: Validator, patrn: str, instance: Any, schema: Any) -> Iterable[Any]:
        if validator.is_type(instance, "string") and not _compile(patrn, "re2", "schema").search(
            instance
        ):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(
        validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
    ) -> Iterable[Any]:
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in patterns.items():
            regex = _compile(patrn, "re2", "schema")
            for key, value in instance.items():
                if regex.search(key):
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    extended: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator, {"pattern": pattern, "patternProperties": pattern_properties}
    )
    return extended


_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
"""Schema keywords whose values are data, not schemas: a ``pattern`` inside is not a regex."""


def _schema_patterns(node: object) -> Iterable[str]:
    """Every regex a schema's ``pattern`` and ``patternProperties`` keywords hold."""
    if isinstance(node, list):
        for item in node:
            yield from _schema_patterns(item)
        return
    if not isinstance(node, Mapping):
        return
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        if key == "pattern" and isinstance(value, str):
            yield value
        elif key == "patternProperties" and isinstance(value, Mapping):
            yield from (p for p in value if isinstance(p, str))
            yield from _schema_patterns(list(value.values()))
        else:
            yield from _schema_patterns(value)


def _check_refs(node: object, root: Mapping[str, Any]) -> None:
    """Every ``$ref`` must point inside the schema: nothing is fetched (a red flag must not
    depend on the network), and a dangling pointer would fail only when an answer reaches it.
    """
    if isinstance(node, list):
        for item in node:
            _check_refs(item, root)
        return
    if not isinstance(node, Mapping):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#"):
            raise ConfigError(
                "schema", f"$ref {ref!r} is not in the schema; put it under $defs (none is fetched)"
            )
        target: object = root
        for part in [p for p in unquote(ref[1:]).split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise ConfigError("schema", f"$ref {ref!r} points at nothing in the schema")
    for key, value in node.items():
        if key not in ("const", "enum", "default", "examples"):  # data, not subschemas
            _check_refs(value, root)


def _schema_problem(validator: Validator, value: Any) -> str | None:
    """The most relevant way ``value`` fails the schema, as one line with its JSON path."""
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    return _one_line(f"{error.json_path}: {error.message}")


@dataclass(frozen=True)
class AnswerParser:
    """Reads one answer out of a model's response, or raises :class:`maker.RedFlag`.

    - ``pattern`` (a Python regex): the answer is taken from the **last** match in the response
      (the paper's parser: a model that corrects itself ends with its final answer): the named
      group ``answer`` if there is one, else the pattern's one group, else the whole match;
      stripped of surrounding whitespace. No match, or an empty answer, is ``malformed``. A
      pattern with several groups and none named ``answer`` is ambiguous: a ConfigError.
    - ``schema`` (a JSON Schema, Draft 2020-12): the answer is a JSON value that must satisfy
      it. Without a pattern the JSON is the whole stripped response or, failing that, the last
      fenced block tagged ``json`` or untagged. Not JSON is ``malformed``; JSON that fails the
      schema is ``schema``, with jsonschema's most relevant error and its JSON path. Formats
      (``"format": "email"``) are annotations only, as the draft's default says.
    - both: the pattern's answer text must be JSON satisfying the schema.
    - neither: the answer is the stripped response; an empty one is ``malformed``.
    - ``engine``: ``"re"`` (Python's regex) or ``"re2"`` (linear time; for patterns from
      untrusted clients, see the module's notes). Both the answer pattern and the schema's
      ``pattern`` keywords use it.

    :meth:`parse` returns a ``str`` without a schema and a JSON value (dict, list, str, number,
    bool or None) with one. Dicts and lists are not hashable; the engine never hashes an answer,
    it keys votes by the canonical JSON of :meth:`maker.Task.answer_to_json`, so equal JSON is
    one candidate whatever its key order. A response is never repaired: what does not parse as
    it stands does not vote.

    >>> AnswerParser(r"result\\s*=\\s*(-?\\d+)").parse("result = 1, no: result = 2")
    '2'
    >>> AnswerParser(r"(?P<answer>\\w+)!").parse("go! stop!")
    'stop'
    >>> parser = AnswerParser(schema={"type": "object", "required": ["move"]})
    >>> parser.parse('Here:\\n```json\\n{"move": [1, 0, 2]}\\n```')
    {'move': [1, 0, 2]}
    >>> parser.parse('{"step": 1}')
    Traceback (most recent call last):
    maker.core._errors.RedFlag: schema: $: 'move' is a required property
    >>> try:
    ...     AnswerParser(r"(\\d+)-(\\d+)")
    ... except ConfigError as exc:
    ...     print(exc.field)
    pattern
    """

    pattern: str | None = None
    schema: Mapping[str, Any] | None = None
    engine: RegexEngine = "re"
    _regex: _Regex | None = field(init=False, repr=False, compare=False)
    _group: int | str = field(init=False, repr=False, compare=False)
    _validator: Validator | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex: _Regex | None = None
        group: int | str = 0
        if self.engine not in ("re", "re2"):
            raise ConfigError("engine", f"must be 're' or 're2', got {self.engine!r}")
        if self.pattern is not None:
            if not isinstance(self.pattern, str):
                raise ConfigError("pattern", f"must be a string, got {type(self.pattern).__name__}")
            regex = _compile(self.pattern, self.engine, "pattern")
            if "answer" in regex.groupindex:
                group = "answer"
            elif regex.groups == 1:
                group = 1
            elif regex.groups > 1:
                raise ConfigError(
                    "pattern",
                    f"has {regex.groups} groups and none named 'answer'; "
                    "name the answer's group (?P<answer>...)",
                )
        validator: Validator | None = None
        if self.schema is not None:
            if not isinstance(self.schema, Mapping):
                raise ConfigError("schema", f"must be an object, got {type(self.schema).__name__}")
            # A private JSON copy: later changes to the caller's dict cannot change the parser.
            schema = _json_value(self.schema, "schema")
            validator = _schema_validator(schema, self.engine)
            object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(self, "_group", group)
        object.__setattr__(self, "_validator", validator)

    def __hash__(self) -> int:
        # The schema is a dict: hash its canonical text, which equal schemas share.
        schema = None if self.schema is None else canonical_json(self.schema)
        return hash((self.pattern, schema, self.engine))

    @property
    def returns_json(self) -> bool:
        """Whether answers are JSON values checked by a schema (else they are strings)."""
        return self._validator is not None

    def describe(self) -> dict[str, Any]:
        """``{"pattern": ..., "schema": ...}`` as JSON (None for what is not set), and
        ``"engine"`` when it is not the default (so that logs from before it existed read
        back unchanged).

        >>> AnswerParser(r"x=(\\d)").describe()
        {'pattern': 'x=(\\\\d)', 'schema': None}
        """
        out = {"pattern": self.pattern, "schema": copy.deepcopy(self.schema)}
        if self.engine != "re":
            out["engine"] = self.engine
        return out

    def parse(self, text: str) -> Any:
        """The answer in ``text``, or raise :class:`maker.RedFlag` (``malformed``/``schema``)."""
        if self._regex is not None:
            # Only the last match counts; a deque of one keeps it without listing them all.
            last = deque(self._regex.finditer(text), maxlen=1)
            if not last:
                raise RedFlag("malformed", "no match for the answer pattern")
            answer = (last[0].group(self._group) or "").strip()
            if not answer:
                # E.g. a pattern like \d* whose last match is the empty one at the very end.
                raise RedFlag("malformed", "the last match of the answer pattern is empty")
            if self._validator is None:
                return answer
            return self._check(self._decode(answer, "the answer pattern's match"))
        stripped = text.strip()
        if not stripped:
            raise RedFlag("malformed", "empty response")
        if self._validator is None:
            return stripped
        return self._check(self._json_in(stripped))

    def check_answer(self, value: Any) -> str | None:
        """Why ``value`` could never be a parsed answer, or None if it could be one.

        >>> AnswerParser(schema={"type": "integer"}).check_answer("7")
        "$: '7' is not of type 'integer'"
        """
        if self._validator is not None:
            return _schema_problem(self._validator, value)
        if not isinstance(value, str):
            return f"must be a string (answers are text without a schema), got {value!r}"
        if not value.strip() or value != value.strip():
            return f"a parsed answer is non-empty and stripped of blanks, got {value!r}"
        return None

    def _check(self, value: Any) -> Any:
        assert self._validator is not None
        problem = _schema_problem(self._validator, value)
        if problem is not None:
            raise RedFlag("schema", problem)
        return value

    @staticmethod
    def _decode(text: str, what: str) -> Any:
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:  # ValidationError too: numbers out of range
            raise RedFlag("malformed", _one_line(f"{what} is not JSON: {exc}")) from None

    def _json_in(self, stripped: str) -> Any:
        """The whole response as JSON or, failing that, its last ```json block."""
        try:
            return msgspec.json.decode(stripped)
        except msgspec.DecodeError:
            pass
        blocks = [body for tag, body in _FENCE.findall(stripped) if tag.lower() in _JSON_FENCE_TAGS]
        if not blocks:
            raise RedFlag("malformed", "the response is not JSON and has no ```json block")
        return self._decode(blocks[-1], "the last ```json block")


class PromptTask(Task[int, Any]):
    """Given prompts, one step each, voted and parsed by an :class:`AnswerParser`.

    ``prompts`` are objects ``{"system": str, "user": str}`` with an optional known
    ``"answer"``: a string without a schema (as the parser returns it: non-empty, stripped), a
    JSON value satisfying the schema with one. One prompt is one error-corrected decision;
    several with known answers are a calibration set for :func:`maker.calibrate`, which judges
    a response right when its parsed answer has the known answer's canonical JSON.

    The state is the index of the next prompt; every prompt is asked as written, whatever was
    voted before. ``params()`` is JSON that :func:`maker.tasks.make_task` rebuilds the task
    from, which replay and resume rely on.

    >>> task = PromptTask(
    ...     [{"system": "Add.", "user": "2 + 2?", "answer": "4"}, {"system": "", "user": "3 + 3?"}],
    ...     pattern=r"=\\s*(\\d+)",
    ... )
    >>> task.prompt(0).user, task.oracle(0), task.oracle(1)
    ('2 + 2?', '4', None)
    >>> task.apply(0, task.parse("2 + 2 = 4")), task.is_done(2), task.max_steps()
    (1, True, 2)
    """

    name: ClassVar[str] = "prompt"

    def __init__(
        self,
        prompts: Sequence[Mapping[str, Any]],
        pattern: str | None = None,
        schema: Mapping[str, Any] | None = None,
        engine: RegexEngine = "re",
    ) -> None:
        self.parser = AnswerParser(pattern, schema, engine)
        if not isinstance(prompts, list | tuple):
            raise ConfigError("prompts", f"must be a list of prompts, got {type(prompts).__name__}")
        if not prompts:
            raise ConfigError("prompts", "give at least one prompt")
        self._prompts: tuple[Prompt, ...] = tuple(
            _check_prompt(i, item) for i, item in enumerate(prompts)
        )
        self._answers: dict[int, Any] = {}
        for i, item in enumerate(prompts):
            if "answer" in item:
                self._answers[i] = self._check_answer(i, item["answer"])

    def _check_answer(self, index: int, value: object) -> Any:
        where = f"prompts[{index}].answer"
        if value is None:
            raise ConfigError(where, "cannot be null: an oracle's None means 'no known answer'")
        answer = _json_value(value, where)
        problem = self.parser.check_answer(answer)
        if problem is not None:
            raise ConfigError(where, problem)
        return answer

    def __repr__(self) -> str:
        return (
            f"PromptTask({len(self._prompts)} prompts, pattern={self.parser.pattern!r}, "
            f"schema={'{...}' if self.parser.schema is not None else None}"
            + (f", engine={self.parser.engine!r})" if self.parser.engine != "re" else ")")
        )

    @property
    def prompts(self) -> tuple[Prompt, ...]:
        """The prompts, in step order."""
        return self._prompts

    def params(self) -> dict[str, Any]:
        """``{"prompts": [...], "pattern": ..., "schema": ...}`` (and ``"engine"`` when not the
        default): JSON that rebuilds the task."""
        prompts: list[dict[str, Any]] = []
        for i, item in enumerate(self._prompts):
            entry: dict[str, Any] = {"system": item.system, "user": item.user}
            if i in self._answers:
                entry["answer"] = copy.deepcopy(self._answers[i])
            prompts.append(entry)
        return {"prompts": prompts, **self.parser.describe()}

    def initial_state(self) -> int:
        """0: the first prompt."""
        return 0

    def is_done(self, state: int) -> bool:
        """Whether every prompt has been decided."""
        return state >= len(self._prompts)

    def max_steps(self) -> int:
        """The number of prompts."""
        return len(self._prompts)

    def prompt(self, state: int) -> Prompt:
        """Prompt number ``state``; ValueError past the last one."""
        if not 0 <= state < len(self._prompts):
            raise StateError(f"no prompt at index {state} (there are {len(self._prompts)})")
        return self._prompts[state]

    def parse(self, text: str) -> Any:
        """The parser's answer, or :class:`maker.RedFlag`."""
        return self.parser.parse(text)

    def apply(self, state: int, answer: Any) -> int:
        """The next prompt: the voted answer is the step's result, not an input to the next."""
        return state + 1

    def state_to_json(self, state: int) -> Any:
        """The index itself."""
        return state

    def state_from_json(self, data: Any) -> int:
        """The inverse of :meth:`state_to_json`; ValueError unless an index in range."""
        if isinstance(data, bool) or not isinstance(data, int):
            raise StateError(f"a prompt task's state is an integer index, got {data!r}")
        if not 0 <= data <= len(self._prompts):
            raise StateError(f"the state must be in 0..{len(self._prompts)}, got {data}")
        return data

    def answer_to_json(self, answer: Any) -> Any:
        """The answer as parsed: already JSON."""
        return answer

    def oracle(self, state: int) -> Any:
        """The known answer of prompt ``state``, or None when it has none."""
        if state not in self._answers:
            return None
        return copy.deepcopy(self._answers[state])


def _check_prompt(index: int, item: object) -> Prompt:
    where = f"prompts[{index}]"
    if not isinstance(item, Mapping):
        raise ConfigError(where, f"must be an object, got {type(item).__name__}")
    for key in item:
        if key not in _PROMPT_KEYS:
            raise ConfigError(
                f"{where}.{key}", "unknown key; a prompt has 'system', 'user' and maybe 'answer'"
            )
    for key in ("system", "user"):
        if key not in item:
            raise ConfigError(f"{where}.{key}", "required")
        if not isinstance(item[key], str):
            raise ConfigError(f"{where}.{key}", f"must be a string, got {type(item[key]).__name__}")
    if not item["user"].strip():
        raise ConfigError(f"{where}.user", "must not be empty")
    return Prompt(system=item["system"], user=item["user"])


@dataclass(frozen=True, kw_only=True)
class Validation:
    """Every red flag one response raises, and what it parses to.

    ``flags`` are in check order (``truncated``, ``too_long``, the user checks, then the
    parser's flag); ``answer`` is the parsed answer, or None when parsing failed (a response
    flagged only for its length still shows what it would have voted for). ``tokens_estimated``
    says that ``output_tokens`` was estimated from the text (see :data:`CHARS_PER_TOKEN`).
    """

    flags: tuple[RedFlag, ...]
    answer: Any
    output_tokens: int
    tokens_estimated: bool

    @property
    def ok(self) -> bool:
        """Whether the response would vote: no red flag at all."""
        return not self.flags

    @property
    def reasons(self) -> tuple[str, ...]:
        """The flags' reasons, in order."""
        return tuple(flag.reason for flag in self.flags)

    def to_json(self) -> dict[str, Any]:
        """JSON builtins: ``ok``, ``flags`` (reason and detail), ``answer`` and the tokens."""
        return {
            "ok": self.ok,
            "flags": [{"reason": f.reason, "detail": f.detail} for f in self.flags],
            "answer": self.answer,
            "output_tokens": self.output_tokens,
            "tokens_estimated": self.tokens_estimated,
        }


_DEFAULT_RULES = RedFlagRules()


def estimate_tokens(text: str) -> int:
    """A rough output token count: ``ceil(len(text) / CHARS_PER_TOKEN)``.

    >>> estimate_tokens(""), estimate_tokens("abcd"), estimate_tokens("abcde")
    (0, 1, 2)
    """
    return -(-len(text) // CHARS_PER_TOKEN)


def validate_response(
    text: str,
    *,
    parser: AnswerParser,
    output_tokens: int | None = None,
    finish_reason: str | None = None,
    rules: RedFlagRules = _DEFAULT_RULES,
) -> Validation:
    """Run every red-flag check on one response and report all that fire.

    The engine stops at a response's first flag; this reports every one, in the engine's
    order: ``truncated`` (``finish_reason`` is ``length`` or ``max_tokens``, when
    ``rules.flag_truncated``), ``too_long`` (more than ``rules.max_output_tokens``), each of
    ``rules.checks`` that fires, then the parser's flag (``malformed`` or ``schema``).

    ``output_tokens`` is estimated as ``ceil(len(text) / 4)`` when not given (a rough rule for
    English text; the result says it was estimated). ``rules.checks`` see a
    :class:`maker.Completion` of ``text`` with that token count, ``finish_reason`` (``""`` when
    unknown), no input tokens and model ``""``.

    >>> v = validate_response("result = ", parser=AnswerParser(r"result = (\\d+)"),
    ...     output_tokens=900, finish_reason="length")
    >>> v.ok, v.reasons
    (False, ('truncated', 'too_long', 'malformed'))
    >>> v = validate_response("result = 42", parser=AnswerParser(r"result = (\\d+)"))
    >>> v.ok, v.answer, v.output_tokens, v.tokens_estimated
    (True, '42', 3, True)
    """
    if not isinstance(text, str):
        raise ConfigError("text", f"must be a string, got {type(text).__name__}")
    if not isinstance(parser, AnswerParser):
        raise ConfigError("parser", f"must be an AnswerParser, got {type(parser).__name__}")
    estimated = output_tokens is None
    if output_tokens is None:
        tokens = estimate_tokens(text)
    elif isinstance(output_tokens, bool) or not isinstance(output_tokens, int) or output_tokens < 0:
        raise ConfigError("output_tokens", f"must be a non-negative integer, got {output_tokens!r}")
    else:
        tokens = output_tokens
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise ConfigError("finish_reason", f"must be a string, got {type(finish_reason).__name__}")
    flags = list(_length_flags(rules, tokens, estimated, finish_reason))
    if rules.checks:
        completion = Completion(
            text=text,
            finish_reason=finish_reason or "",
            input_tokens=0,
            output_tokens=tokens,
            model="",
        )
        for rule in rules.checks:
            reason = rule(completion)
            if reason:
                flags.append(RedFlag(reason))
    answer: Any = None
    try:
        answer = parser.parse(text)
    except RedFlag as flag:
        flags.append(flag)
    return Validation(
        flags=tuple(flags), answer=answer, output_tokens=tokens, tokens_estimated=estimated
    )


def _length_flags(
    rules: RedFlagRules, tokens: int, estimated: bool, finish_reason: str | None
) -> Iterable[RedFlag]:
    # The same flags and details as RedFlagRules.check, so a validation reads like the log.
    if rules.flag_truncated and finish_reason in TRUNCATED_REASONS:
        yield RedFlag("truncated", f"finish_reason={finish_reason}")
    if rules.max_output_tokens is not None and tokens > rules.max_output_tokens:
        note = " (estimated from the text's length)" if estimated else ""
        yield RedFlag("too_long", f"{tokens} > {rules.max_output_tokens} output tokens{note}")
