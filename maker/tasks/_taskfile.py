"""Task files: "prompt, parse, update a JSON state" declared in TOML, with no code.

A task file declares an initial JSON state, the prompt templates over it, a parser (a regex or a
JSON Schema, by the prompt task's :class:`~maker.tasks.AnswerParser`), how the voted answer
updates the state (replace it, append to a list in it, set a field of it), when the task is done
and its step budget; and, optionally, a ``[simulate]`` section that lets the simulated model
answer it offline. :func:`load_task_file` reads one; :class:`TaskFile` is the task, built-in
under the name ``taskfile`` with the file's content as its parameters, so that a log alone
rebuilds it (``maker replay --verify``, ``resume``, ``show``) with no file and no plugin trust.

**Templates** are :class:`string.Template` (``${state.letters}``, ``$$`` for a dollar sign),
over a mapping this module writes: a placeholder is a dotted path whose first name is
``state`` (and ``answer`` in ``[simulate].response``), each further part an object's key or a
list's index (negative from the end). The mapping does one thing: look a path up in JSON
data. Nothing in a template can call a function, reach an attribute or evaluate anything:
``string.Template`` only asks the mapping for the placeholder's whole text, and this mapping
only indexes dicts and lists. ``str.format`` was not used: its fields reach attributes
(``{0.__class__}``), and a prompt's literal JSON braces would need doubling. A string renders
as itself; any other value as compact JSON.

**Paths** (``update.path``, ``done.path``) are dotted (``letters``, ``board.0``,
``letters.-1``) or JSON pointers (``/letters``, ``/a~1b``); the empty path is the whole state.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec

from events import canonical_json

from ..core._errors import ConfigError, RedFlag, StateError
from ..core._task import Prompt, Task
from ._prompt import AnswerParser, RegexEngine, _compile, _json_value, _one_line, _Regex
from ._taskfile_sim import TaskFileSimulator, note_prompt

# -- the file's schema --------------------------------------------------------------------------


class _Section(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A table of the file: an unknown key is an error, a default is not recorded."""


class PromptSpec(_Section):
    """``[prompt]``: the system and user templates."""

    user: str
    system: str = ""


class ParseSpec(_Section):
    """``[parse]``: the answer parser, and a length red flag."""

    pattern: str | None = None
    schema: dict[str, Any] | None = None
    engine: RegexEngine = "re"
    max_chars: int | None = None


class UpdateSpec(_Section):
    """``[update]``: the state after a voted answer."""

    rule: Literal["replace", "append", "set"]
    path: str | None = None


class DoneSpec(_Section):
    """``[done]``: exactly one test of the value at ``path``."""

    path: str = ""
    equals: Any = msgspec.UNSET
    length: int | None = None
    matches: str | None = None


class SimulateSpec(_Section):
    """``[simulate]``: the right answer (a template, or a table by a key template), wrong
    answers, and how a model writes an answer."""

    answer: str | None = None
    key: str | None = None
    table: dict[str, Any] | None = None
    wrong: list[str] = msgspec.field(default_factory=list)
    response: str = "${answer}"


class TaskFileSpec(_Section):
    """A whole task file, as :class:`TaskFile` takes it and ``run_started`` records it."""

    max_steps: int
    state: Any
    prompt: PromptSpec
    update: UpdateSpec
    done: DoneSpec
    parse: ParseSpec = msgspec.field(default_factory=ParseSpec)
    simulate: SimulateSpec | None = None


class TaskFileError(ConfigError):
    """A task file that cannot be a task: one line naming the file and the field.

    >>> str(TaskFileError("letters.toml", "prompt.usr", "unknown key"))
    'letters.toml: prompt.usr: unknown key'
    """

    def __init__(self, path: str, field: str, message: str) -> None:
        super().__init__(field, message)
        self.path = path
        self.args = (f"{path}: {field}: {message}" if field else f"{path}: {message}",)


_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")


def _validation_error(exc: msgspec.ValidationError) -> ConfigError:
    """msgspec's ``... - at `$.prompt``` as a ConfigError naming the field (``prompt.x``)."""
    found = _AT.match(str(exc))
    assert found is not None  # the pattern matches any text
    message, where = found["message"], (found["where"] or "").lstrip(".")
    for pattern, says in ((_UNKNOWN, "unknown key"), (_MISSING, "required")):
        key = pattern.match(message)
        if key is not None:
            return ConfigError(f"{where}.{key['key']}" if where else key["key"], says)
    return ConfigError(where or "file", _one_line(message))


# -- paths ----------------------------------------------------------------------------------------

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_DOTTED = re.compile(rf"(?:{_NAME}|-?[0-9]+)(?:\.(?:{_NAME}|-?[0-9]+))*")
_INDEX = re.compile(r"-?[0-9]+")


class JsonPath:
    """A place in a JSON value: dotted (``a.b.-1``) or a JSON pointer (``/a/b/0``).

    A part looks up an object's key, or a list's index (negative from the end in a dotted
    path). Nothing else: no attribute, no call.

    >>> JsonPath.parse("letters.-1", "p").get({"letters": ["a", "b"]})
    'b'
    >>> JsonPath.parse("/a~1b/0", "p").get({"a/b": [7]})
    7
    """

    __slots__ = ("negative", "parts", "text")

    def __init__(self, text: str, parts: tuple[str, ...], *, negative: bool) -> None:
        self.text = text
        self.parts = parts
        self.negative = negative

    @classmethod
    def parse(cls, text: str, field: str) -> JsonPath:
        """The path ``text``, or a ConfigError naming ``field``."""
        if text == "":
            return cls(text, (), negative=False)
        if text.startswith("/"):
            parts = []
            for raw in text[1:].split("/"):
                if re.search(r"~(?![01])", raw):
                    raise ConfigError(field, f"bad JSON pointer {text!r}: '~' must be ~0 or ~1")
                parts.append(raw.replace("~1", "/").replace("~0", "~"))
            return cls(text, tuple(parts), negative=False)
        if not _DOTTED.fullmatch(text):
            raise ConfigError(
                field,
                f"bad path {text!r}: write dotted names and indexes (letters.-1) or a JSON "
                "pointer (/letters/0)",
            )
        return cls(text, tuple(text.split(".")), negative=True)

    def __str__(self) -> str:
        return self.text or "(the whole state)"

    def _index(self, items: list[Any], part: str, *, room: int = 0) -> int:
        if not _INDEX.fullmatch(part) or (part.startswith("-") and not self.negative):
            raise KeyError(f"{part!r} is not an index of a list")
        index = int(part)
        if index < 0:
            index += len(items)
        if not 0 <= index < len(items) + room:
            raise KeyError(f"index {part} is out of range (the list has {len(items)} items)")
        return index

    def _step(self, node: Any, part: str) -> Any:
        if isinstance(node, dict):
            if part not in node:
                raise KeyError(f"no key {part!r}")
            return node[part]
        if isinstance(node, list):
            return node[self._index(node, part)]
        raise KeyError(f"{part!r} is inside a {_kind(node)}, which has no keys")

    def get(self, value: Any) -> Any:
        """The value at this path; KeyError saying where it fails."""
        for part in self.parts:
            value = self._step(value, part)
        return value

    def set(self, value: Any, new: Any) -> None:
        """Set the value at this path (an object's key may be new); KeyError as :meth:`get`."""
        *parents, last = self.parts
        node = value
        for part in parents:
            node = self._step(node, part)
        if isinstance(node, dict):
            node[last] = new
        elif isinstance(node, list):
            node[self._index(node, last)] = new
        else:
            raise KeyError(f"{last!r} is inside a {_kind(node)}, which has no keys")


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )


# -- templates ------------------------------------------------------------------------------------


class _StateTemplate(string.Template):
    """``$name`` / ``${name}`` placeholders whose names are dotted paths (``${state.a.-1}``)."""

    idpattern = r"(?a:[_a-z][_a-z0-9]*(?:\.(?:[_a-z][_a-z0-9_-]*|-?[0-9]+))*)"


class _Lookup(Mapping[str, str]):
    """The only thing a template can do: look a dotted path up in JSON data by its root name.

    Keys are a placeholder's whole text; values are strings (a string as itself, anything else
    as compact JSON). There is no attribute access and no call anywhere on this path.
    """

    def __init__(self, roots: Mapping[str, Any]) -> None:
        self._roots = roots

    def __getitem__(self, name: str) -> str:
        root, _, rest = name.partition(".")
        if root not in self._roots:
            known = ", ".join("${" + r + "}" for r in self._roots)
            raise KeyError(f"${{{name}}}: unknown name {root!r} (a template reads {known})")
        try:
            value = JsonPath.parse(rest, "template").get(self._roots[root])
        except (KeyError, ConfigError) as exc:
            detail = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            raise KeyError(f"${{{name}}}: {detail}") from None
        if isinstance(value, str):
            return value
        return msgspec.json.encode(value).decode()

    def __iter__(self) -> Iterator[str]:
        return iter(self._roots)

    def __len__(self) -> int:
        return len(self._roots)


class Template:
    """A checked template of the file: its placeholders' root names are known when loaded.

    >>> Template("Last: ${state.xs.-1}; cost $$3", "prompt.user").render(state={"xs": [1, 2]})
    'Last: 2; cost $3'
    """

    __slots__ = ("_template", "field", "text")

    def __init__(self, text: str, field: str, roots: tuple[str, ...] = ("state",)) -> None:
        self.text = text
        self.field = field
        self._template = _StateTemplate(text)
        for found in _StateTemplate.pattern.finditer(text):
            if found["invalid"] is not None:
                line = text[: found.start()].count("\n") + 1
                raise ConfigError(
                    field,
                    f"a '$' on line {line} starts no placeholder: write ${{state.path}}, "
                    "or $$ for a dollar sign",
                )
            name = found["named"] or found["braced"]
            if name is not None and name.partition(".")[0] not in roots:
                raise ConfigError(
                    field,
                    f"${{{name}}}: unknown name {name.partition('.')[0]!r} (a template here "
                    f"reads {', '.join('${' + r + '}' for r in roots)})",
                )

    def render(self, **roots: Any) -> str:
        """The text with every placeholder looked up; StateError naming the field and the
        placeholder when the data has no such place."""
        try:
            return self._template.substitute(_Lookup(roots))
        except KeyError as exc:
            raise StateError(f"{self.field}: {exc.args[0]}") from None


# -- the task -------------------------------------------------------------------------------------

_MALFORMED = ("I could not work out the next step.", "")


class TaskFile(Task[Any, Any]):
    """A task declared by a task file (see the module's notes); its parameters are the file.

    The keyword arguments are the file's tables (``max_steps``, ``state``, ``prompt``,
    ``parse``, ``update``, ``done``, ``simulate``), as :func:`load_task_file` decodes them or a
    log's ``run_started`` records them. Raises :class:`~maker.ConfigError` naming the field.

    >>> task = TaskFile(
    ...     max_steps=3,
    ...     state={"xs": []},
    ...     prompt={"user": "So far: ${state.xs}. Next?"},
    ...     parse={"pattern": "next = (\\\\d+)"},
    ...     update={"rule": "append", "path": "xs"},
    ...     done={"path": "xs", "length": 2},
    ... )
    >>> state = task.apply(task.initial_state(), task.parse("next = 4"))
    >>> state, task.prompt(state).user, task.is_done(state)
    ({'xs': ['4']}, 'So far: ["4"]. Next?', False)
    """

    name: ClassVar[str] = "taskfile"

    def __init__(self, /, **spec: Any) -> None:
        try:
            decoded = msgspec.convert(spec, TaskFileSpec)
        except msgspec.ValidationError as exc:
            raise _validation_error(exc) from None
        self.spec = decoded
        if decoded.max_steps < 1:
            raise ConfigError("max_steps", f"must be at least 1, got {decoded.max_steps}")
        self._state = _json_value(decoded.state, "state")
        self._system = Template(decoded.prompt.system, "prompt.system")
        self._user = Template(decoded.prompt.user, "prompt.user")
        if not decoded.prompt.user.strip():
            raise ConfigError("prompt.user", "must not be empty")
        self.parser = self._parser(decoded.parse)
        self._update, self._update_path = self._update_rule(decoded.update)
        self._done_path, self._matches = self._done_rule(decoded.done, decoded.parse.engine)
        # Rendered once here: a placeholder the initial state cannot fill is the file's error.
        self._check_renders(self._system)
        self._check_renders(self._user)
        self._simulation: _Simulation | None = None
        if decoded.simulate is not None:
            self._simulation = _Simulation(decoded.simulate, self.parser, self._state)

    @staticmethod
    def with_engine(params: Mapping[str, Any], engine: RegexEngine) -> dict[str, Any]:
        """``params`` with every pattern of the file matched by ``engine``: how a service runs
        a task file from a request on the linear-time engine, whatever the request asks.

        >>> TaskFile.with_engine({"parse": {"pattern": "x"}}, "re2")["parse"]
        {'pattern': 'x', 'engine': 're2'}
        """
        out = dict(params)
        parse = out.get("parse", {})
        if isinstance(parse, Mapping):  # else the task's validation names the field
            out["parse"] = {**parse, "engine": engine}
        return out

    # -- building -------------------------------------------------------------------------

    @staticmethod
    def _parser(spec: ParseSpec) -> AnswerParser:
        if spec.max_chars is not None and spec.max_chars < 1:
            raise ConfigError("parse.max_chars", f"must be at least 1, got {spec.max_chars}")
        try:
            return AnswerParser(spec.pattern, spec.schema, spec.engine)
        except ConfigError as exc:
            message = str(exc).removeprefix(f"{exc.field}: ")
            raise ConfigError(f"parse.{exc.field}", message) from None

    def _update_rule(self, spec: UpdateSpec) -> tuple[str, JsonPath | None]:
        if spec.rule == "replace":
            if spec.path is not None:
                raise ConfigError("update.path", "the replace rule replaces the whole state")
            return spec.rule, None
        if spec.path is None or spec.path == "":
            raise ConfigError(
                "update.path", f"the {spec.rule} rule needs the path it updates (else: replace)"
            )
        path = JsonPath.parse(spec.path, "update.path")
        # Only the rule changes the state, and it changes nothing but its target: what holds
        # for the initial state holds for every state.
        try:
            if spec.rule == "append":
                target = path.get(self._state)
                if not isinstance(target, list):
                    raise KeyError(f"it is a {_kind(target)} in the initial state, not a list")
            else:
                *parents, _ = path.parts
                parent = JsonPath("", tuple(parents), negative=path.negative).get(self._state)
                if not isinstance(parent, dict | list):
                    raise KeyError(f"its parent is a {_kind(parent)}, not an object or a list")
                path.set(copy.deepcopy(self._state), None)
        except KeyError as exc:
            raise ConfigError("update.path", f"{spec.path}: {exc.args[0]}") from None
        return spec.rule, path

    def _done_rule(self, spec: DoneSpec, engine: RegexEngine) -> tuple[JsonPath, _Regex | None]:
        tests = [
            name
            for name, given in (
                ("equals", spec.equals is not msgspec.UNSET),
                ("length", spec.length is not None),
                ("matches", spec.matches is not None),
            )
            if given
        ]
        if len(tests) != 1:
            raise ConfigError(
                "done", f"give exactly one of equals, length and matches, got {tests or 'none'}"
            )
        path = JsonPath.parse(spec.path, "done.path")
        if spec.equals is not msgspec.UNSET:
            _json_value(spec.equals, "done.equals")
        if spec.length is not None and spec.length < 0:
            raise ConfigError("done.length", f"must not be negative, got {spec.length}")
        regex = None if spec.matches is None else _compile(spec.matches, engine, "done.matches")
        if self.spec.update.rule != "replace":  # else the state's shape is the answers'
            try:
                path.get(self._state)
            except KeyError as exc:
                raise ConfigError("done.path", f"{path}: {exc.args[0]}") from None
        return path, regex

    def _check_renders(self, template: Template) -> None:
        try:
            template.render(state=self._state)
        except StateError as exc:
            message = str(exc).removeprefix(f"{template.field}: ")
            raise ConfigError(template.field, f"{message} in the initial state") from None

    # -- the Task protocol ----------------------------------------------------------------

    def __repr__(self) -> str:
        return f"TaskFile(max_steps={self.spec.max_steps}, update={self.spec.update.rule!r})"

    def params(self) -> dict[str, Any]:
        """The file's content as JSON, defaults left out: what rebuilds the task."""
        out: dict[str, Any] = msgspec.to_builtins(self.spec)
        out["state"] = copy.deepcopy(self._state)
        return out

    def initial_state(self) -> Any:
        """A copy of the file's ``state``."""
        return copy.deepcopy(self._state)

    def max_steps(self) -> int:
        """The file's ``max_steps``: a run not done after them fails."""
        return self.spec.max_steps

    def is_done(self, state: Any) -> bool:
        """The ``[done]`` test of the value at ``done.path``."""
        try:
            value = self._done_path.get(state)
        except KeyError as exc:
            raise StateError(f"done.path: {self._done_path}: {exc.args[0]}") from None
        done = self.spec.done
        if done.equals is not msgspec.UNSET:
            # JSON equality: true is not 1, and 1 is not 1.0, as in the log's canonical text.
            return canonical_json(value) == canonical_json(done.equals)
        if done.length is not None:
            if not isinstance(value, list | dict | str):
                raise StateError(f"done.path: {self._done_path} is a {_kind(value)}, no length")
            return len(value) >= done.length
        assert self._matches is not None
        text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        return self._matches.search(text) is not None

    def prompt(self, state: Any) -> Prompt:
        """The templates rendered over ``state``."""
        prompt = Prompt(
            system=self._system.render(state=state), user=self._user.render(state=state)
        )
        if self._simulation is not None:
            note_prompt(prompt.system, prompt.user, self._simulation, state)
        return prompt

    def parse(self, text: str) -> Any:
        """The parser's answer; ``too_long`` past ``parse.max_chars``; else its red flag."""
        limit = self.spec.parse.max_chars
        if limit is not None and len(text) > limit:
            raise RedFlag("too_long", f"{len(text)} > {limit} characters")
        return self.parser.parse(text)

    def apply(self, state: Any, answer: Any) -> Any:
        """The ``[update]`` rule, on a copy of ``state``."""
        if self._update == "replace":
            return copy.deepcopy(answer)
        assert self._update_path is not None
        new = copy.deepcopy(state)
        try:
            if self._update == "append":
                target = self._update_path.get(new)
                if not isinstance(target, list):
                    raise KeyError(f"it is a {_kind(target)}, not a list")
                target.append(copy.deepcopy(answer))
            else:
                self._update_path.set(new, copy.deepcopy(answer))
        except KeyError as exc:
            raise StateError(f"update.path: {self._update_path}: {exc.args[0]}") from None
        return new

    def state_to_json(self, state: Any) -> Any:
        """The state: already JSON."""
        return state

    def state_from_json(self, data: Any) -> Any:
        """A JSON copy of ``data``; StateError for what JSON cannot hold."""
        try:
            return _json_value(data, "state")
        except ConfigError as exc:
            raise StateError(str(exc)) from None

    def answer_to_json(self, answer: Any) -> Any:
        """The answer as parsed: already JSON."""
        return answer

    def oracle(self, state: Any) -> Any:
        """The ``[simulate]`` section's right answer, or None (also without the section)."""
        if self._simulation is None:
            return None
        return self._simulation.oracle(state)

    def simulator(self) -> TaskFileSimulator | None:
        """The task-file simulator when the file has a ``[simulate]`` section, else None
        (then ``--model sim`` cannot answer the file's prompts)."""
        return TaskFileSimulator() if self._simulation is not None else None


class _Simulation:
    """What a ``[simulate]`` section says about each state (see :mod:`._taskfile_sim`)."""

    def __init__(self, spec: SimulateSpec, parser: AnswerParser, state: Any) -> None:
        self._parser = parser
        self._answer: Template | None = None
        self._key: Template | None = None
        self._table: dict[str, Any] = {}
        if (spec.answer is None) == (spec.key is None):
            raise ConfigError("simulate", "give the answer template, or a key and a table")
        if spec.answer is not None:
            if spec.table is not None:
                raise ConfigError("simulate.table", "goes with simulate.key, not simulate.answer")
            self._answer = Template(spec.answer, "simulate.answer")
        else:
            if spec.table is None:
                raise ConfigError("simulate.table", "required with simulate.key")
            self._key = Template(spec.key or "", "simulate.key")
            for key, value in spec.table.items():
                where = f"simulate.table.{key}"
                answer = _json_value(value, where)
                problem = parser.check_answer(answer)
                if problem is not None:
                    raise ConfigError(where, problem)
                self._table[key] = answer
        self._wrong = tuple(
            Template(text, f"simulate.wrong[{i}]") for i, text in enumerate(spec.wrong)
        )
        self._response = Template(spec.response, "simulate.response", ("state", "answer"))
        self._malformed = next((t for t in _MALFORMED if _rejects(parser, t)), "")
        self._salt = canonical_json(msgspec.to_builtins(spec))
        self._check(state)

    def _check(self, state: Any) -> None:
        """The initial state's templates render, and its right answer's response parses back
        to it: else every simulated response would be red-flagged, and the run fail late."""
        for template in (self._answer, self._key):
            if template is not None:
                try:
                    template.render(state=state)
                except StateError as exc:
                    message = str(exc).removeprefix(f"{template.field}: ")
                    raise ConfigError(template.field, f"{message} in the initial state") from None
        right = self.oracle(state)
        if right is None:
            return
        try:
            text = self._response.render(state=state, answer=right)
        except StateError as exc:
            message = str(exc).removeprefix("simulate.response: ")
            raise ConfigError("simulate.response", f"{message} in the initial state") from None
        try:
            parsed = self._parser.parse(text)
        except RedFlag as flag:
            raise ConfigError(
                "simulate.response",
                f"the initial state's answer is written {text!r}, which the parser rejects "
                f"({flag})",
            ) from None
        if canonical_json(parsed) != canonical_json(right):
            raise ConfigError(
                "simulate.response",
                f"the initial state's answer {canonical_json(right)} is written {text!r}, "
                f"which parses to {canonical_json(parsed)}",
            )

    def key(self, state: Any) -> str:
        return f"{self._salt}:{canonical_json(state)}"

    def _value(self, template: Template, state: Any) -> Any:
        """A rendered answer template as an answer: JSON text with a schema, else stripped."""
        text = template.render(state=state)
        if not self._parser.returns_json:
            return text.strip()
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError:
            raise StateError(f"{template.field}: renders {text!r}, which is not JSON") from None

    def oracle(self, state: Any) -> Any:
        if self._answer is not None:
            answer = self._value(self._answer, state)
        else:
            assert self._key is not None
            answer = self._table.get(self._key.render(state=state))
        if answer is None or self._parser.check_answer(answer) is not None:
            return None
        return copy.deepcopy(answer)

    def right_response(self, state: Any) -> str | None:
        right = self.oracle(state)
        return None if right is None else self._response.render(state=state, answer=right)

    def wrong_responses(self, state: Any) -> list[str]:
        right = self.oracle(state)
        seen = {canonical_json(right)} if right is not None else set()
        wrong: list[Any] = []
        candidates: list[Any] = []
        for template in self._wrong:
            try:
                candidates.append(self._value(template, state))
            except StateError:  # a wrong answer this state cannot fill is left out
                continue
        if not self._wrong:
            candidates = list(self._table.values())
        for answer in candidates:
            key = canonical_json(answer)
            if key not in seen and self._parser.check_answer(answer) is None:
                seen.add(key)
                wrong.append(answer)
        return [self._response.render(state=state, answer=a) for a in wrong]

    def render_malformed(self) -> str:
        return self._malformed


def _rejects(parser: AnswerParser, text: str) -> bool:
    try:
        parser.parse(text)
    except RedFlag:
        return True
    return False


def load_task_file(path: str | Path) -> TaskFile:
    """The task a TOML task file declares; :class:`TaskFileError` (one line naming the file and
    the field) for a file that is not TOML, has an unknown or missing key, or a bad value."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TaskFileError(where, "", f"cannot be read: {exc.strerror or exc}") from None
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise TaskFileError(where, "", f"not TOML: {_one_line(str(exc))}") from None
    try:
        return TaskFile(**raw)
    except ConfigError as exc:
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise TaskFileError(where, exc.field, message) from None
