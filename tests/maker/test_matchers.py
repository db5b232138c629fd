"""Matchers: each key is stable under the transformations its matcher claims to ignore and
different for answers it must tell apart (hypothesis), its spec reads back canonical, and the
policy records it so that logs from before matchers read as exact."""

from __future__ import annotations

import json
import random
import string
import unicodedata
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from events import canonical_json
from maker import ConfigError, Matcher, Policy, make_matcher
from maker.core import EXACT, PolicyRecord, matcher_spec, recorded_policy
from maker.core._matchers import python_tree

WORDS = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8),
    min_size=1,
    max_size=6,
)
SPACE = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000", min_size=1, max_size=3)


def spaced(words: list[str], gaps: list[str], ends: tuple[str, str]) -> str:
    """The words joined by the given runs of whitespace, with whitespace at the ends."""
    out = ends[0] + words[0]
    for i, word in enumerate(words[1:]):
        out += gaps[i % len(gaps)] + word
    return out + ends[1]


# -- whitespace, case, Unicode ------------------------------------------------------------------


@given(WORDS, st.lists(SPACE, min_size=1, max_size=5), st.tuples(st.just("") | SPACE, SPACE))
def test_space_ignores_runs_of_whitespace(
    words: list[str], gaps: list[str], ends: tuple[str, str]
) -> None:
    m = Matcher("space")
    assert (
        m.key(spaced(words, gaps, ends))
        == m.key(" ".join(words))
        == canonical_json(" ".join(words))
    )
    # Inside any JSON: a list and an object's values (never its keys).
    answer = {"a": [spaced(words, gaps, ends)], " b ": 1}
    assert m.key(answer) == canonical_json({"a": [" ".join(words)], " b ": 1})


@given(WORDS, WORDS)
def test_space_tells_other_words_apart(a: list[str], b: list[str]) -> None:
    assume(a != b)
    m = Matcher("space")
    assert m.key(" ".join(a)) != m.key(" ".join(b))
    assert m.key("".join(a)) != m.key(" ".join(a)) or len(a) == 1  # a space is not nothing


# Letters whose upper and lower case fold alike (not the Turkish dotless i and its kin, which
# case folding keeps apart by design).
LETTERS = st.characters(categories=("Lu", "Ll")).filter(
    lambda c: c.upper().casefold() == c.lower().casefold() == c.casefold()
)


@given(st.text(LETTERS, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_case_ignores_case(text: str, rng: random.Random) -> None:
    m = Matcher("case")
    mixed = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)
    assert m.key(mixed) == m.key(text.upper()) == m.key(text.lower())


@given(st.text(LETTERS, min_size=1, max_size=12), st.text(LETTERS, min_size=1, max_size=12))
def test_case_tells_other_letters_apart(a: str, b: str) -> None:
    assume(a.casefold() != b.casefold())
    assert Matcher("case").key(a) != Matcher("case").key(b)


def full_width(text: str) -> str:
    """ASCII printables as their full-width compatibility forms (U+FF01..U+FF5E)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@given(st.text(st.characters(codec="utf-8"), max_size=20))
def test_unicode_ignores_the_normal_form(text: str) -> None:
    m = Matcher("unicode")
    forms = {m.key(unicodedata.normalize(form, text)) for form in ("NFC", "NFD", "NFKC", "NFKD")}
    assert forms == {canonical_json(unicodedata.normalize("NFKC", text))}


@given(st.text(alphabet=string.printable.strip(), min_size=1, max_size=20))
def test_unicode_reads_compatibility_forms_as_their_letters(text: str) -> None:
    m = Matcher("unicode")
    assert m.key(full_width(text)) == m.key(text)


@given(st.text(alphabet=string.ascii_letters, min_size=1), st.text(string.ascii_letters))
def test_unicode_tells_other_text_apart(a: str, b: str) -> None:
    assume(a != b)
    assert Matcher("unicode").key(full_width(a)) != Matcher("unicode").key(b)


@given(WORDS, st.lists(SPACE, min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_text_ignores_case_width_and_spacing_together(
    words: list[str], gaps: list[str], rng: random.Random
) -> None:
    m = Matcher("text")
    plain = " ".join(w.lower() for w in words)
    messy = spaced(
        [full_width(w.upper()) if rng.random() < 0.5 else w.swapcase() for w in words],
        gaps,
        (" ", "\u3000"),  # an ideographic space, which NFKC makes a space
    )
    assert m.key(messy) == m.key(plain) == canonical_json(plain)


@given(WORDS, WORDS)
def test_text_tells_other_words_apart(a: list[str], b: list[str]) -> None:
    assume([w.lower() for w in a] != [w.lower() for w in b])
    assert Matcher("text").key(" ".join(a)) != Matcher("text").key(" ".join(b))


# -- numbers -------------------------------------------------------------------------------------


def forms_of(n: int) -> list[Any]:
    """Ways of writing the integer n that mean n."""
    digits = str(abs(n))
    sign = "-" if n < 0 else ""
    exponent = f"{sign}{digits[0]}.{digits[1:] or '0'}e{len(digits) - 1}"
    out: list[Any] = [n, str(n), f"{n}.0", f"{n}.000", f" {n} ", exponent, f"{Decimal(n):E}"]
    if n >= 0:
        out.append(f"+{n}")
    if abs(n) < 2**53:
        out.append(float(n))
    return out


@given(st.integers(-(10**30), 10**30), st.data())
def test_number_ignores_how_a_number_is_written(n: int, data: st.DataObject) -> None:
    m = Matcher("number")
    forms = forms_of(n)
    a, b = data.draw(st.sampled_from(forms)), data.draw(st.sampled_from(forms))
    assert m.key(a) == m.key(b) == canonical_json(n)
    assert m.key({"result": a}) == m.key({"result": b})


@given(st.integers(-(10**15), 10**15), st.integers(-(10**15), 10**15))
def test_number_tells_other_integers_apart(a: int, b: int) -> None:
    assume(a != b)
    m = Matcher("number:rel=0")
    assert m.key(str(a)) != m.key(f"{b}.0")
    # Within one step, the default relative tolerance (1e-9) tells them apart too, unless
    # they are that close.
    g = Matcher("number").grouping()
    first, second = g.key(str(a)), g.key(str(b))
    assert (first == second) == (abs(a - b) <= 1e-9 * max(abs(a), abs(b)))


@given(
    st.floats(-1e12, 1e12, allow_nan=False).filter(lambda x: abs(x) > 1e-6),
    st.floats(-0.49, 0.49),
)
def test_number_tolerance_groups_what_is_within_it(x: float, share: float) -> None:
    """``rel`` is the claim: a value within rel of the step's first agrees with it."""
    rel = 1e-3
    g = Matcher(f"number:rel={rel}").grouping()
    first = g.key(x)
    near = x * (1 + share * rel)  # within rel of x (half of it, at most, so rounding is no issue)
    assert g.key(near) == first
    assert g.key(str(near)) == first
    far = x * (1 + 3 * rel) + (3 * rel if x > 0 else -3 * rel)
    assert g.key(far) != first


def test_number_leaves_what_is_not_a_number() -> None:
    m = Matcher("number")
    assert m.key("4 2") == canonical_json("4 2")
    assert m.key("1,000") == canonical_json("1,000")  # a comma is not read: 1.000 or 1000?
    assert m.key(True) == "true" != m.key(1)
    assert m.key("1e999999999") == canonical_json("1e999999999")  # kept, never expanded
    assert m.key(["7", {"n": "7.0"}]) == '[7,{"n":7}]'
    g = Matcher("number:abs=0.5").grouping()
    assert g.key([1, "a"]) == g.key([1.4, "a"]) != g.key([1.4, "b"])
    assert g.key(10**400) == g.key(10**400 + 1 - 1) != g.key(2 * 10**400)  # beyond a float


# -- JSON ----------------------------------------------------------------------------------------

JSON_LEAVES = st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=5)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def shuffled(value: Any, rng: random.Random, *, lists: bool) -> Any:
    """``value`` with every object's keys in another order (and every list's items, if asked)."""
    if isinstance(value, dict):
        items = [(k, shuffled(v, rng, lists=lists)) for k, v in value.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        items = [shuffled(v, rng, lists=lists) for v in value]
        if lists:
            rng.shuffle(items)
        return items
    return value


@given(JSON_VALUES, st.randoms(use_true_random=False))
def test_json_ignores_field_order_and_json_held_in_a_string(value: Any, rng: random.Random) -> None:
    m = Matcher("json")
    other = shuffled(value, rng, lists=False)
    assert m.key(other) == m.key(value)
    if isinstance(value, dict | list):
        assert m.key(json.dumps(other, indent=rng.choice([None, 2]))) == m.key(value)


@given(st.lists(st.text(max_size=4), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_json_sets_ignore_order_and_repeats_where_declared(
    tags: list[str], rng: random.Random
) -> None:
    m = Matcher("json:sets=/tags;/groups/*")
    answer = {"tags": tags, "groups": [tags, tags[::-1]], "order": tags}
    other = {
        "order": list(tags),
        "groups": [shuffled(tags, rng, lists=True), tags + tags[:1]],
        "tags": shuffled(tags + tags, rng, lists=True),
    }
    assert m.key(other) == m.key(answer)
    assert Matcher("json:sets=all").key(tags[::-1] + tags) == Matcher("json:sets=/").key(tags)


@given(st.lists(st.integers(0, 9), min_size=2, max_size=6, unique=True), st.integers(10, 20))
def test_json_tells_apart_other_sets_and_undeclared_orders(items: list[int], extra: int) -> None:
    m = Matcher("json:sets=/tags")
    assert m.key({"tags": items}) != m.key({"tags": [*items, extra]})
    assert m.key({"tags": items}) != m.key({"tags": items[1:]})
    # An array not declared a set keeps its order.
    assert m.key({"order": items}) != m.key({"order": items[::-1]})


# -- Python --------------------------------------------------------------------------------------

PROGRAMS = (
    "def {f}({a}, {b}):\n    {c} = {a} + {b}\n    return {c} * 2\n",
    "def {f}({a}):\n    return [{b} for {b} in {a} if {b} % 2]\n",
    "class {f}:\n    def {a}(self, {b}):\n        self.value = {b}\n        return len({b})\n",
    "import math as {f}\n{a} = {f}.sqrt(2)\nfor {b} in range(3):\n    {a} += {b}\n",
    "def {f}({a}, *{b}, **{c}):\n    try:\n        return {a}(*{b}, **{c})\n"
    "    except ValueError as {c}:\n        return str({c})\n",
    "async def {f}({a}):\n    async with {a} as {b}:\n        return await {b}.read()\n",
)
NAMES = st.lists(
    st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
        lambda n: (
            n not in {"if", "in", "as", "or", "is", "for", "def", "and", "not", "try"}
            and n not in {"len", "str", "range", "math", "self", "print", "sum", "read", "sqrt"}
            and n not in {"await", "async", "class", "return", "import", "except", "with"}
        )
    ),
    min_size=4,
    max_size=4,
    unique=True,
)


def written(template: str, names: list[str], rng: random.Random) -> str:
    """The program with these names, a docstring, comments and blank lines thrown in."""
    code = template.format(f=names[0], a=names[1], b=names[2], c=names[3])
    lines = []
    for line in code.splitlines():
        lines.append(
            line + ("  # " + "".join(rng.choices(string.ascii_letters, k=5))) * rng.randint(0, 1)
        )
        if rng.random() < 0.3:
            lines.append("")
    doc = rng.choice(['"""What it does."""\n', "'''Another docstring.'''\n", ""])
    return doc + "\n".join(lines) + "\n"


@given(st.sampled_from(PROGRAMS), NAMES, NAMES, st.randoms(use_true_random=False))
def test_python_ignores_names_layout_comments_and_docstrings(
    template: str, names: list[str], other: list[str], rng: random.Random
) -> None:
    m = Matcher("python")
    assert m.key(written(template, names, rng)) == m.key(written(template, other, rng))
    # At a path inside an answer, the same.
    p = Matcher("python:path=/code")
    assert p.key({"code": written(template, names, rng), "lang": "py"}) == p.key(
        {"code": written(template, other, rng), "lang": "py"}
    )


@given(st.sampled_from(PROGRAMS), st.sampled_from(PROGRAMS), NAMES, st.randoms())
def test_python_tells_other_programs_apart(
    a: str, b: str, names: list[str], rng: random.Random
) -> None:
    m = Matcher("python")
    one = written(a, names, rng)
    if a != b:
        assert m.key(one) != m.key(written(b, names, rng))
    # A changed constant, operator or free name is another program.
    for old, new in ((" * 2", " * 3"), (" + ", " - "), ("len(", "sum("), ("% 2", "% 3")):
        if old in one:
            assert m.key(one) != m.key(one.replace(old, new, 1))
    # Without renaming, names count.
    keep = Matcher("python:names=keep")
    assert keep.key(written(a, names, rng)) != keep.key(written(a, [n + "x" for n in names], rng))


def test_python_renames_only_what_the_code_binds() -> None:
    # The names a program reads but never binds are its interface: they keep their names.
    assert python_tree("print(x)") != python_tree("print(y)")
    assert python_tree("x = 1\nprint(x)") == python_tree("y = 1\nprint(y)")
    assert python_tree("def f(a): return a.size") != python_tree("def f(a): return a.shape")
    # A renamed name never meets a free one: '$' is no identifier's.
    assert python_tree("def f(a): return v0 + a") != python_tree("def f(a): return a + a")
    # What does not parse is compared as text, and never raises.
    assert python_tree("def (:") is None
    assert Matcher("python").key("def (:") == canonical_json("def (:")
    assert Matcher("python").key("print('\\d')") == Matcher("python").key('print("\\d")')
    assert Matcher("python").key(["not", "a string"]) == '["not","a string"]'


# -- composition, specs, the recorded policy -----------------------------------------------------


def test_parts_apply_in_order_and_one_may_compare() -> None:
    g = Matcher("text+number:abs=0.5").grouping()
    assert g.key(" THE answer ") == '"the answer"'
    assert g.key("10") == g.key(" 10.4 ") == g.key(10.0) == "10"
    assert g.key("11") == "11"
    # Within a step, an answer joins the first cluster it agrees with.
    assert g.key(10.45) == "10"


def test_a_key_is_fixed_within_a_step_whatever_came_after() -> None:
    g = Matcher("number:abs=1").grouping()
    assert [g.key(x) for x in (5, 5.9, 6.5, 5.9, 7.6, 6.5)] == ["5", "5", "6.5", "5", "7.6", "6.5"]


SPECS = st.sampled_from(
    [
        "exact",
        "text",
        "space+case",
        "unicode + number",
        "number:abs=0.01,rel=0",
        "number:rel=1e-6",
        "json:sets=/b;/a/*",
        "json:sets=all",
        "python:path=/code,names=keep",
        "embedding:threshold=0.85",
        "text+embedding",
    ]
)


@given(SPECS)
def test_a_spec_reads_back_canonical(spec: str) -> None:
    canonical = matcher_spec(spec)
    assert matcher_spec(canonical) == canonical
    assert " " not in canonical
    assert Policy(matcher=spec).matcher == canonical


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("nope", "unknown matcher 'nope'; known: case, embedding, exact"),
        ("text:x=1", "text takes no options, got x"),
        ("number:rel=2", "number: rel must be a number >= 0 and below 1, got 2"),
        ("number:tol=1", "number: unknown option 'tol'"),
        ("number:rel", "number: options are KEY=VALUE"),
        ("number:rel=1,rel=2", "option 'rel' given twice"),
        ("json:sets=tags", "json: sets: 'tags' is not a path"),
        ("python:names=drop", "python: names must be normalize or keep"),
        ("embedding:threshold=1.5", "embedding: threshold must be in (0, 1]"),
        ("number+embedding", "at most one part may compare answers"),
        ("exact+text", "exact stands alone"),
        ("", "must be a matcher spec"),
    ],
)
def test_a_bad_spec_is_one_config_error_naming_the_matcher(spec: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Policy(matcher=spec)
    assert caught.value.field == "matcher"
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_policy_records_its_matcher_and_old_logs_read_as_exact() -> None:
    recorded = Policy(k=2, matcher="text + number").describe()
    assert recorded["matcher"] == "text+number"
    assert Policy.from_json(recorded).matcher == "text+number"
    # The exact matcher is left out, as runs recorded before matchers have it.
    assert "matcher" not in Policy().describe()
    old = {k: v for k, v in Policy().describe().items() if k != "matcher"}
    record = recorded_policy(old)
    assert isinstance(record, PolicyRecord)
    assert record.matcher == EXACT
    assert Policy.from_json(old).matcher == EXACT


def test_make_matcher_builds_every_pure_spec_without_a_model() -> None:
    for spec in ("exact", "text", "number", "json:sets=all", "python"):
        assert make_matcher(spec).spec == matcher_spec(spec)
    assert make_matcher("exact").exact
    with pytest.raises(ConfigError, match="needs its model"):
        Matcher("embedding")
