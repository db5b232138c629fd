"""Patterns from clients run on RE2: linear-time matching, refused constructs, the engine recorded.

A catastrophic pattern such as ``(\\d+)+!`` takes Python's ``re`` exponential time on a line of
digits with no ``!`` (25 digits froze a server for minutes); RE2 answers at once. The checks
that would hang if the engine regressed to ``re`` run in a subprocess with a timeout, so that a
regression fails the test instead of stalling the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maker.core import ConfigError, RedFlag
from maker.tasks import AnswerParser, PromptTask, make_task

CATASTROPHIC = r"(\d+)+!"


def test_catastrophic_patterns_run_in_linear_time_on_re2() -> None:
    script = textwrap.dedent(
        f"""
        from maker.core import RedFlag
        from maker.tasks import AnswerParser, validate_response

        digits = "1" * 100_000  # 2**100000 paths for a backtracking engine
        for parser, text in [
            (AnswerParser({CATASTROPHIC!r}, engine="re2"), digits),
            (AnswerParser(schema={{"type": "string", "pattern": "^{CATASTROPHIC}$"}},
                          engine="re2"), '"' + digits + '"'),
            (AnswerParser(schema={{"type": "object", "patternProperties":
                                   {{"^{CATASTROPHIC}$": {{"type": "null"}}}}}}, engine="re2"),
             '{{"' + digits + '": 1}}'),
        ]:
            try:
                parser.parse(text)
            except RedFlag as flag:
                print(flag.reason)
            else:
                print("parsed")
        print(validate_response(digits, parser=AnswerParser({CATASTROPHIC!r}, engine="re2")).flags)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # No "!" anywhere: no match (malformed), the schema's pattern fails (schema), and the key
    # does not match patternProperties, which leaves it unconstrained (parsed).
    assert lines[:3] == ["malformed", "schema", "parsed"]
    assert "malformed" in lines[3]
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [(r"(a)\1", "backreference"), (r"x(?=y)", "lookahead"), (r"(?<!a)b", "lookbehind")],
)
def test_constructs_re2_cannot_run_are_refused_with_one_clear_line(
    pattern: str, construct: str, capfd: pytest.CaptureFixture[str]
) -> None:
    AnswerParser(pattern)  # Python's re runs it: the project's own patterns may use it
    with pytest.raises(ConfigError) as info:
        AnswerParser(pattern, engine="re2")
    message = str(info.value)
    assert info.value.field == "pattern", construct
    assert "RE2" in message
    assert "\n" not in message
    assert "backreferences and lookaround" in message
    # RE2 logs its parse errors on stderr unless told not to: nothing may leak there.
    assert capfd.readouterr().err == ""


def test_a_schema_pattern_re2_cannot_run_is_refused_when_the_parser_is_made() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}}
    AnswerParser(schema=schema)
    with pytest.raises(ConfigError, match="RE2") as info:
        AnswerParser(schema=schema, engine="re2")
    assert info.value.field == "schema"
    # Data that merely looks like a pattern is not compiled.
    AnswerParser(schema={"const": {"pattern": "(?=x)"}}, engine="re2")


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ConfigError, match="'re' or 're2'"):
        AnswerParser("x", engine="pcre")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    # ASCII: RE2's \w, \d and \s are ASCII classes where Python's are Unicode (documented).
    text=st.text(alphabet="ab=0123456789 \n!", max_size=60),
    pattern=st.sampled_from(
        [r"=\s*(\d+)", r"(?P<answer>[ab]+)!", r"\d+", r"(?m)^(\w+)$", r"a(\d*)b"]
    ),
)
def test_re2_parses_what_re_parses_for_ordinary_patterns(text: str, pattern: str) -> None:
    def outcome(parser: AnswerParser) -> object:
        try:
            return parser.parse(text)
        except RedFlag as flag:
            return flag.reason

    assert outcome(AnswerParser(pattern, engine="re2")) == outcome(AnswerParser(pattern))


def test_the_engine_is_part_of_the_recorded_task() -> None:
    prompts = [{"system": "", "user": "2 + 2?", "answer": "4"}]
    plain = PromptTask(prompts, pattern=r"=\s*(\d+)")
    # Logs from before the engine existed have no "engine" key, and read back unchanged.
    assert "engine" not in plain.params()
    strict = PromptTask(prompts, pattern=r"=\s*(\d+)", engine="re2")
    assert strict.params()["engine"] == "re2"
    rebuilt = make_task("prompt", strict.params())
    assert isinstance(rebuilt, PromptTask)
    assert rebuilt.parser.engine == "re2"
    assert rebuilt.parser == strict.parser
    assert make_task("prompt", plain.params()).parser.engine == "re"  # type: ignore[attr-defined]


def test_mcp_tools_compile_client_patterns_with_re2(tmp_path: Path) -> None:
    """Through the real server: a catastrophic pattern answers at once, RE2's refusals are tool
    errors, and the server keeps serving."""
    script = textwrap.dedent(
        f"""
        import sys, anyio
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        async def main():
            params = StdioServerParameters(command=sys.executable,
                args=["-m", "maker", "mcp", "--log", "mcp.db"], env={{"PYTHONUNBUFFERED": "1"}},
                cwd={str(tmp_path)!r})
            with open({str(tmp_path / "stderr.txt")!r}, "w") as errlog:
                async with Client(stdio_client(params, errlog=errlog)) as client:
                    out = await client.call_tool("validate",
                        {{"response": "1" * 50_000, "pattern": {CATASTROPHIC!r}}})
                    print([f["reason"] for f in out.structured_content["flags"]])
                    bad = await client.call_tool("validate",
                        {{"response": "xy", "pattern": "x(?=y)"}})
                    print(bad.is_error, bad.content[0].text)
                    ok = await client.call_tool("kmin", {{"p": 0.99}})
                    print(ok.structured_content["k_min"] >= 1)

        anyio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    flags, refused, alive = done.stdout.splitlines()
    assert "'malformed'" in flags  # and too_long: 50,000 characters
    assert refused.startswith("True ")
    assert "RE2" in refused
    assert alive == "True"
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()
