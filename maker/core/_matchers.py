"""Matchers: the candidate key a parsed answer votes under. Pure, no I/O.

By default two answers vote together only when their canonical JSON is the same text (the
``exact`` matcher). A matcher lets answers that agree in meaning vote together (the paper's
semantic matching): ``"42"`` and ``"42.0"``, ``" Paris "`` and ``"paris"``, a list of the same
items in another order, the same code under other names. Answers that split the vote lower the
effective p of a step and raise its cost; matched, they count as one candidate.

A matcher is named by a **spec**, which ``run_started`` records with the policy: one part, or
parts joined by ``+`` and applied left to right, each ``NAME`` or ``NAME:OPTION=VALUE,...``:

- ``exact``: canonical JSON, the default (alone only);
- ``space``: runs of whitespace in every string are one space, none at the ends;
- ``case``: every string case-folded;
- ``unicode``: every string in Unicode NFKC (compatibility forms: the ligature U+FB01 is
  ``fi``, full-width digits are digits);
- ``text``: ``unicode``, ``case`` and ``space`` together;
- ``number``: a number, or a string that is exactly one (``"42"``, ``" 4.2e1 "``), is its
  value, so ``42``, ``42.0`` and ``"42"`` agree; two answers agree when they are the same but for
  numbers within ``rel`` (relative, default 1e-9) or ``abs`` (absolute, default 0) of each other;
- ``json``: a string holding a JSON object or array is that JSON (fields unordered, as JSON
  objects always are here); ``sets=PATH;PATH`` declares arrays whose order and repeats do not
  count (``/tags``, ``/groups/*/members``, ``/`` for the whole answer, ``*`` any one key or
  index; ``sets=all`` for every array);
- ``python``: the answer (or the string at ``path=/POINTER``) is Python code, compared by its
  syntax tree: layout, comments and docstrings do not count, and ``names=normalize`` (the
  default; ``keep`` to turn it off) renames every name the code binds (variables, arguments,
  functions, classes, ``as`` names) by order of appearance, so ``def f(x): return x`` and
  ``def g(y): return y`` agree. Names the code only reads (builtins, imports' modules,
  attributes) keep their names. Code that does not parse is compared as text;
- ``embedding``: answers whose sentence embeddings have a cosine similarity of at least
  ``threshold`` (default 0.9) agree; the model (``model=all-minilm-l6-v2``) is loaded from an
  installed package (the ``embedding`` extra), never fetched.

``number`` with a tolerance and ``embedding`` compare answers rather than rewrite them: within
a step, an answer joins the first earlier answer it agrees with (its cluster's first member,
in the order the votes were counted), or starts a cluster of its own. So a key depends on the
answers before it in the same step, which the log records in order: a replay keys them again
the same way. A spec may hold at most one such part.

A key is the canonical JSON of the rewritten answer (of a cluster's first member), so it reads
like an answer: a step's ``winner`` is a key, and the answer the run applies is the one parsed
from the **first** sample counted for the winning key. That sample is fixed by the log's order
(a replay applies the same one), and under the paper's settings it is the step's sample drawn
at temperature 0 when that one voted for the winner.
"""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, ClassVar, Final, Protocol

from events import canonical_json

from ._errors import ConfigError

EXACT: Final = "exact"
"""The spec of the default matcher: canonical JSON."""

DEFAULT_EMBEDDING_MODEL: Final = "all-minilm-l6-v2"
"""The embedding model the ``embedding`` matcher uses unless its spec names another."""


class Embedder(Protocol):
    """Turns texts into unit vectors (what the ``embedding`` matcher compares)."""

    def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """One vector of length 1 per text, in order."""
        ...


EmbedderLoader = Callable[[str], Embedder]
"""Gives the :class:`Embedder` of a model name (``maker.clients.load_embedder``)."""


# -- the parts ------------------------------------------------------------------------------------


class Part(ABC):
    """One part of a matcher spec: rewrites an answer's JSON, and may compare two of them."""

    name: ClassVar[str]

    @property
    def clusters(self) -> bool:
        """Whether the part compares answers (a tolerance, a similarity) rather than only
        rewrite them."""
        return False

    @classmethod
    @abstractmethod
    def from_options(cls, options: dict[str, str]) -> Part:
        """The part its spec's options describe; ConfigError naming what is wrong."""

    def options(self) -> list[tuple[str, str]]:
        """The options that differ from their defaults, in a fixed order (for the spec)."""
        return []

    @property
    def spec(self) -> str:
        """The part's canonical spec."""
        options = self.options()
        if not options:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in options)

    def normalize(self, value: Any) -> Any:
        """The answer's JSON, rewritten (the default leaves it as it is)."""
        return value


def _no_options(name: str, options: dict[str, str]) -> None:
    if options:
        raise ConfigError("matcher", f"{name} takes no options, got {', '.join(options)}")


def _map_strings(value: Any, rewrite: Callable[[str], Any]) -> Any:
    """``value`` with every string in it (not object keys) rewritten."""
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, list):
        return [_map_strings(item, rewrite) for item in value]
    if isinstance(value, dict):
        return {key: _map_strings(item, rewrite) for key, item in value.items()}
    return value


class Exact(Part):
    """Canonical JSON: the default."""

    name = EXACT

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Exact:
        _no_options(cls.name, options)
        return cls()


class Space(Part):
    """Whitespace runs are one space; none at the ends."""

    name = "space"

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Space:
        _no_options(cls.name, options)
        return cls()

    def normalize(self, value: Any) -> Any:
        return _map_strings(value, lambda s: " ".join(s.split()))


class Case(Part):
    """Strings are case-folded (``str.casefold``: ``ß`` is ``ss``)."""

    name = "case"

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Case:
        _no_options(cls.name, options)
        return cls()

    def normalize(self, value: Any) -> Any:
        return _map_strings(value, str.casefold)


class Unicode(Part):
    """Strings in Unicode NFKC."""

    name = "unicode"

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Unicode:
        _no_options(cls.name, options)
        return cls()

    def normalize(self, value: Any) -> Any:
        return _map_strings(value, lambda s: unicodedata.normalize("NFKC", s))


def _text(s: str) -> str:
    # NFKC first: it may make spaces (U+3000) and letters a fold then sees; NFKC again after
    # the fold, which can leave a string not in NFKC.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", s).casefold())
    return " ".join(folded.split())


class Text(Part):
    """``unicode``, ``case`` and ``space`` together."""

    name = "text"

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Text:
        _no_options(cls.name, options)
        return cls()

    def normalize(self, value: Any) -> Any:
        return _map_strings(value, _text)


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_NUMBER_CHARS = 400
"""A longer numeric string is left a string: its value could be costly to build (1e99999999)."""
_MAX_EXPONENT = 400
_SAFE_INT = 2**53


def _float(text: str, field: str, *, below: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError("matcher", f"{field} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0.0) or (below is not None and value >= below):
        bound = f" and below {below:g}" if below is not None else ""
        raise ConfigError("matcher", f"{field} must be a number >= 0{bound}, got {text}")
    return value


def _number_of(text: str) -> int | float | None:
    """The value of a string that is exactly one number (spaces around allowed), else None."""
    text = text.strip()
    if len(text) > _MAX_NUMBER_CHARS or _NUMBER.fullmatch(text) is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only what Decimal reads
        return None
    if abs(value.adjusted()) > _MAX_EXPONENT:
        return None
    if value == value.to_integral_value():
        return int(value)
    return _plain(float(value))


def _plain(value: float) -> int | float:
    """A float as its value: an integral one an int (so 42.0 is 42), -0.0 as 0."""
    if value.is_integer() and abs(value) < _SAFE_INT:
        return int(value)
    return value


def _numbers(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return _plain(value) if math.isfinite(value) else value
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        number = _number_of(value)
        return value if number is None else number
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    return value


class Number(Part):
    """Numbers by value, and within ``rel`` or ``abs`` of each other."""

    name = "number"
    REL: ClassVar[float] = 1e-9
    ABS: ClassVar[float] = 0.0

    def __init__(self, rel: float = REL, abs: float = ABS) -> None:
        self.rel = rel
        self.abs = abs

    @property
    def clusters(self) -> bool:
        return self.rel > 0.0 or self.abs > 0.0

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Number:
        unknown = set(options) - {"rel", "abs"}
        if unknown:
            raise ConfigError("matcher", f"number: unknown option {sorted(unknown)[0]!r}")
        rel = _float(options["rel"], "number: rel", below=1.0) if "rel" in options else cls.REL
        tol = _float(options["abs"], "number: abs") if "abs" in options else cls.ABS
        return cls(rel, tol)

    def options(self) -> list[tuple[str, str]]:
        out = []
        if self.rel != self.REL:
            out.append(("rel", repr(self.rel)))
        if self.abs != self.ABS:
            out.append(("abs", repr(self.abs)))
        return out

    def normalize(self, value: Any) -> Any:
        return _numbers(value)

    def features(self, value: Any) -> Any:
        return value

    def close(self, a: Any, b: Any) -> bool:
        """Whether ``a`` and ``b`` are the same JSON but for numbers within the tolerance."""
        if _is_number(a) and _is_number(b):
            return self._near(a, b)
        if type(a) is not type(b):
            return False
        if isinstance(a, list):
            return len(a) == len(b) and all(self.close(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(self.close(a[k], b[k]) for k in a)
        return bool(a == b)

    def _near(self, a: float, b: float) -> bool:
        if a == b:
            return True
        for x in (a, b):
            if isinstance(x, float) and not math.isfinite(x):
                return False
        try:
            diff = abs(a - b)
            return diff <= self.abs or diff <= self.rel * max(abs(a), abs(b))
        except OverflowError:  # ints beyond a float's range: exact rationals
            exact = abs(Fraction(a) - Fraction(b))
            bound = Fraction(self.rel) * max(abs(Fraction(a)), abs(Fraction(b)))
            return exact <= Fraction(self.abs) or exact <= bound


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# JSON pointers with '*' for any one key or index; '/' alone is the whole answer.
_SEGMENT = r"(?:[^/;,+=:~]|~[01])*"
_POINTER = re.compile(rf"/|(?:/{_SEGMENT})+")


def _pointer(text: str, field: str) -> tuple[str, ...]:
    if _POINTER.fullmatch(text) is None:
        raise ConfigError(
            "matcher", f"{field}: {text!r} is not a path ('/', or '/key/...', '*' for any one)"
        )
    if text == "/":
        return ()
    return tuple(s.replace("~1", "/").replace("~0", "~") for s in text[1:].split("/"))


def _pointer_text(path: tuple[str, ...]) -> str:
    if not path:
        return "/"
    return "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in path)


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if len(pattern) != len(path):
        return False
    return all(p in ("*", s) for p, s in zip(pattern, path, strict=True))


class Json(Part):
    """JSON text in strings read as JSON; declared arrays compared as sets."""

    name = "json"

    def __init__(self, sets: tuple[tuple[str, ...], ...] = (), every: bool = False) -> None:
        self.sets = sets
        self.every = every

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Json:
        unknown = set(options) - {"sets"}
        if unknown:
            raise ConfigError("matcher", f"json: unknown option {sorted(unknown)[0]!r}")
        text = options.get("sets")
        if text is None:
            return cls()
        if text == "all":
            return cls(every=True)
        paths = [p for p in text.split(";") if p]
        if not paths:
            raise ConfigError("matcher", "json: sets needs a path ('/key', or 'all')")
        parsed = sorted({_pointer(p, "json: sets") for p in paths})
        return cls(tuple(parsed))

    def options(self) -> list[tuple[str, str]]:
        if self.every:
            return [("sets", "all")]
        if self.sets:
            return [("sets", ";".join(_pointer_text(p) for p in self.sets))]
        return []

    def normalize(self, value: Any) -> Any:
        return self._walk(value, ())

    def _walk(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            value = _json_in(value)
            if isinstance(value, str):
                return value
        if isinstance(value, dict):
            return {key: self._walk(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            items = [self._walk(item, (*path, str(i))) for i, item in enumerate(value)]
            if self.every or any(_matches(p, path) for p in self.sets):
                return [x for _, x in sorted({canonical_json(x): x for x in items}.items())]
            return items
        return value


def _json_in(text: str) -> Any:
    """The JSON object or array a string holds, or the string."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return text
    try:
        # The stdlib reader: it keeps big ints, and a bad text is just not JSON.
        value = json.loads(stripped, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return text
    return value if isinstance(value, dict | list) else text


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: JSON holds no infinity
        raise ValueError(text)
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(text)  # NaN, Infinity: not JSON


class Python(Part):
    """Python code by its syntax tree, names it binds renamed by order of appearance."""

    name = "python"

    def __init__(self, path: tuple[str, ...] = (), rename: bool = True) -> None:
        self.path = path
        self.rename = rename

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Python:
        unknown = set(options) - {"path", "names"}
        if unknown:
            raise ConfigError("matcher", f"python: unknown option {sorted(unknown)[0]!r}")
        names = options.get("names", "normalize")
        if names not in ("normalize", "keep"):
            raise ConfigError("matcher", f"python: names must be normalize or keep, got {names!r}")
        path = _pointer(options["path"], "python: path") if "path" in options else ()
        if "*" in path:
            raise ConfigError("matcher", "python: path names one string, without '*'")
        return cls(path, names == "normalize")

    def options(self) -> list[tuple[str, str]]:
        out = []
        if self.path:
            out.append(("path", _pointer_text(self.path)))
        if not self.rename:
            out.append(("names", "keep"))
        return out

    def normalize(self, value: Any) -> Any:
        return self._at(value, self.path)

    def _at(self, value: Any, path: tuple[str, ...]) -> Any:
        if not path:
            if not isinstance(value, str):
                return value
            tree = python_tree(value, rename=self.rename)
            return value if tree is None else tree
        head, rest = path[0], path[1:]
        if isinstance(value, dict) and head in value:
            return {k: self._at(v, rest) if k == head else v for k, v in value.items()}
        if isinstance(value, list) and head.isdigit() and int(head) < len(value):
            i = int(head)
            return [self._at(v, rest) if n == i else v for n, v in enumerate(value)]
        return value


def python_tree(code: str, *, rename: bool = True) -> str | None:
    """The syntax tree of ``code`` as text (``ast.dump``), without docstrings, the names it
    binds renamed ``$0``, ``$1``, ... by order of appearance; None if it does not parse.

    >>> python_tree("def f(x):\\n    return x + 1") == python_tree("def g(y): return y+1")
    True
    >>> python_tree("len(x)") == python_tree("sum(x)")  # free names keep their names
    False
    """
    try:
        with warnings.catch_warnings():
            # "invalid escape sequence" and the like: the code is compared, not run.
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
        _drop_docstrings(tree)
        if rename:
            _rename(tree)
        return ast.dump(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _drop_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]


def _bound(tree: ast.AST) -> set[str]:
    """The names ``tree`` binds."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.alias) and node.asname:
            names.add(node.asname)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names.update(node.names)
    return names


def _rename(tree: ast.AST) -> None:
    bound = _bound(tree)
    mapping: dict[str, str] = {}

    def new(name: str) -> str:
        if name not in bound:
            return name
        # '$' cannot be in an identifier: a renamed name never meets a name the code reads.
        return mapping.setdefault(name, f"${len(mapping)}")

    # ast.walk visits in one fixed order (breadth first, fields in order): two trees that
    # differ only in names meet their names in the same order.
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.name = new(node.name)
        elif isinstance(node, ast.arg):
            node.arg = new(node.arg)
        elif isinstance(node, ast.Name):
            node.id = new(node.id)
        elif isinstance(node, ast.alias) and node.asname:
            node.asname = new(node.asname)
        elif isinstance(node, ast.keyword) and node.arg is not None:
            node.arg = new(node.arg)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            node.name = new(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            node.rest = new(node.rest)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            node.names = [new(n) for n in node.names]


class Embedding(Part):
    """Answers whose embeddings are at least ``threshold`` similar (cosine)."""

    name = "embedding"
    THRESHOLD: ClassVar[float] = 0.9

    def __init__(
        self,
        threshold: float = THRESHOLD,
        model: str = DEFAULT_EMBEDDING_MODEL,
        embedder: Embedder | None = None,
    ) -> None:
        self.threshold = threshold
        self.model = model
        self.embedder = embedder

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Embedding:
        unknown = set(options) - {"threshold", "model"}
        if unknown:
            raise ConfigError("matcher", f"embedding: unknown option {sorted(unknown)[0]!r}")
        threshold = cls.THRESHOLD
        if "threshold" in options:
            threshold = _float(options["threshold"], "embedding: threshold")
            if not 0.0 < threshold <= 1.0:
                raise ConfigError(
                    "matcher", f"embedding: threshold must be in (0, 1], got {options['threshold']}"
                )
        model = options.get("model", DEFAULT_EMBEDDING_MODEL)
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", model):
            raise ConfigError("matcher", f"embedding: model must be a model's name, got {model!r}")
        return cls(threshold, model)

    @property
    def clusters(self) -> bool:
        return True

    def options(self) -> list[tuple[str, str]]:
        out = []
        if self.threshold != self.THRESHOLD:
            out.append(("threshold", repr(self.threshold)))
        if self.model != DEFAULT_EMBEDDING_MODEL:
            out.append(("model", self.model))
        return out

    def features(self, value: Any) -> tuple[float, ...]:
        assert self.embedder is not None
        text = value if isinstance(value, str) else canonical_json(value)
        return self.embedder.embed([text])[0]

    def close(self, a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return math.fsum(x * y for x, y in zip(a, b, strict=True)) >= self.threshold


PARTS: dict[str, type[Part]] = {
    part.name: part for part in (Exact, Space, Case, Unicode, Text, Number, Json, Python, Embedding)
}
"""Every part a spec may name, by name."""

_NAME = re.compile(r"[a-z]+")


def _parts(spec: str) -> tuple[Part, ...]:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("matcher", f"must be a matcher spec such as 'text', got {spec!r}")
    parts: list[Part] = []
    for chunk in spec.split("+"):
        name, _, rest = chunk.strip().partition(":")
        name = name.strip()
        cls = PARTS.get(name)
        if cls is None:
            shown = repr(name) if _NAME.fullmatch(name) else repr(chunk.strip())
            raise ConfigError(
                "matcher", f"unknown matcher {shown}; known: {', '.join(sorted(PARTS))}"
            )
        options: dict[str, str] = {}
        if rest.strip():
            for item in rest.split(","):
                key, eq, value = item.partition("=")
                key, value = key.strip(), value.strip()
                if not eq or not key or not value:
                    raise ConfigError(
                        "matcher", f"{name}: options are KEY=VALUE, separated by commas: {item!r}"
                    )
                if key in options:
                    raise ConfigError("matcher", f"{name}: option {key!r} given twice")
                options[key] = value
        elif ":" in chunk:
            raise ConfigError("matcher", f"{name}: nothing after ':'")
        parts.append(cls.from_options(options))
    if len(parts) > 1 and any(isinstance(p, Exact) for p in parts):
        raise ConfigError("matcher", "exact stands alone: it is what no matcher does")
    clustering = [p.name for p in parts if p.clusters]
    if len(clustering) > 1:
        raise ConfigError(
            "matcher",
            "at most one part may compare answers (number with a tolerance, embedding); "
            f"got {' and '.join(clustering)} (give number:rel=0 to only rewrite numbers)",
        )
    return tuple(parts)


def matcher_spec(spec: str) -> str:
    """The canonical form of a matcher spec (defaults left out, fixed option order), checked
    without loading anything; :class:`ConfigError` (field ``matcher``) says what is wrong.

    >>> matcher_spec(" text + number:abs=0.5,rel=1e-9")
    'text+number:abs=0.5'
    >>> matcher_spec("nope")
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: matcher: unknown matcher 'nope'; known: case, embedding, \
exact, json, number, python, space, text, unicode
    """
    return "+".join(part.spec for part in _parts(spec))


def needs_embedder(spec: str) -> str | None:
    """The embedding model a spec needs, or None."""
    for part in _parts(spec):
        if isinstance(part, Embedding):
            return part.model
    return None


class Matcher:
    """A spec's parts, ready to key a step's answers (see the module's notes).

    >>> m = Matcher("text+number")
    >>> g = m.grouping()
    >>> g.key(" Forty  Two "), g.key("forty two"), g.key("42"), g.key(42.0)
    ('"forty two"', '"forty two"', '42', '42')
    """

    __slots__ = ("_clusterer", "_parts", "spec")

    def __init__(self, spec: str, *, embedder: EmbedderLoader | None = None) -> None:
        parts = _parts(spec)
        for part in parts:
            if isinstance(part, Embedding):
                if embedder is None:
                    raise ConfigError(
                        "matcher",
                        "the embedding matcher needs its model: build it with "
                        "maker.make_matcher (the 'embedding' extra)",
                    )
                part.embedder = embedder(part.model)
        self._parts = tuple(p for p in parts if not isinstance(p, Exact))
        self._clusterer: Number | Embedding | None = next(
            (p for p in parts if p.clusters and isinstance(p, Number | Embedding)), None
        )
        self.spec = "+".join(part.spec for part in parts)

    def __repr__(self) -> str:
        return f"Matcher({self.spec!r})"

    @property
    def exact(self) -> bool:
        """Whether this is the default matcher, canonical JSON."""
        return not self._parts

    def normalize(self, value: Any) -> Any:
        """An answer's JSON rewritten by every part, in order."""
        for part in self._parts:
            value = part.normalize(value)
        return value

    def grouping(self) -> Grouping:
        """The keys of one start of a step: a fresh one for each start."""
        return Grouping(self)

    def key(self, value: Any) -> str:
        """The key of ``value`` alone (as the first answer of a step)."""
        return self.grouping().key(value)

    def parts(self) -> Iterator[Part]:
        """The parts, in order."""
        return iter(self._parts)


class Grouping:
    """The keys of one start of a step: which answers agree with which, in counting order."""

    __slots__ = ("_by_norm", "_by_raw", "_clusterer", "_leaders", "_matcher")

    def __init__(self, matcher: Matcher) -> None:
        self._matcher = matcher
        self._clusterer = matcher._clusterer
        self._by_raw: dict[str, str] = {}
        self._by_norm: dict[str, str] = {}
        self._leaders: list[tuple[Any, str]] = []

    def key(self, value: Any, raw: str | None = None) -> str:
        """The key ``value`` (an answer's JSON; ``raw`` its canonical text, if known) votes
        under: its rewritten JSON, or that of the first earlier answer it agrees with."""
        if raw is None:
            raw = canonical_json(value)
        found = self._by_raw.get(raw)
        if found is not None:
            return found
        try:
            norm = self._matcher.normalize(value)
            nkey = canonical_json(norm)
        except RecursionError:
            # Nesting too deep to rewrite: the answer is its own key, as without a matcher.
            norm, nkey = value, raw
        key = self._by_norm.get(nkey)
        if key is None:
            key = nkey
            clusterer = self._clusterer
            if clusterer is not None:
                features = clusterer.features(norm)
                for leader, leader_key in self._leaders:
                    if clusterer.close(leader, features):
                        key = leader_key
                        break
                else:
                    self._leaders.append((features, nkey))
            self._by_norm[nkey] = key
        self._by_raw[raw] = key
        return key
