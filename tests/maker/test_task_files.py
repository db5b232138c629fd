"""Task files: a TOML file declares "prompt, parse, update a JSON state"; its errors are one line
naming the file and the field; its templates only look data up; each update rule, done test
and the step budget; its simulator; and, from the CLI, a run that replays from its log alone."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import click
import pytest

from maker import ConfigError, Engine, Policy, RedFlag, SimulatedModel, StateError
from maker.apps._options import build_task
from maker.clients._sim import sim_config
from maker.tasks import TaskFile, TaskFileError, TaskFileSimulator, load_task_file, make_task

from ._cli import maker, one_error_line

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "letters.toml"

NEXT = {"a": "b", "b": "c", "c": "d", "d": "e", "e": "f", "f": "g"}


def spec(**changes: Any) -> dict[str, Any]:
    """A small valid task file's content (the alphabet, appended), with ``changes``: merged into
    the prompt, parse and simulate tables, replacing the others (None removes a table)."""
    base: dict[str, Any] = {
        "max_steps": 4,
        "state": {"letters": ["a"]},
        "prompt": {
            "system": "Continue.",
            "user": "So far ${state.letters}; after ${state.letters.-1}?",
        },
        "parse": {"pattern": r"next = (?P<answer>[a-z])\b"},
        "update": {"rule": "append", "path": "letters"},
        "done": {"path": "letters", "length": 5},
        "simulate": {"key": "${state.letters.-1}", "table": NEXT, "response": "next = ${answer}"},
    }
    for key, value in changes.items():
        if value is None:
            base.pop(key)
        elif key in ("prompt", "parse", "simulate") and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def run_on_sim(task: TaskFile, tmp_path: Path, *, p: float = 1.0, seed: int = 1) -> Any:
    model = SimulatedModel(sim_config("ideal", p=p))

    async def go() -> Any:
        async with Engine(log=tmp_path / f"log-{seed}.db", client=model) as engine:
            return await engine.run(task, policy=Policy(k=2), seed=seed)

    return anyio.run(go)


# -- the file's errors: one line, naming the file and the field ------------------------------


PATTERN = "pattern = 'next = (?P<answer>[a-z])\\b'"
UPDATE_PATH = 'path = "letters"        #'


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("[prompt]", "[prompt]\nusr = 'x'", r"prompt\.usr: unknown key$"),
        ("max_steps = 5", "max_steps = 5\ncolour = 'red'", r"colour: unknown key$"),
        (PATTERN, "pattern = '(unclosed'", r"parse\.pattern: not a valid regex: missing \)"),
        (
            PATTERN,
            "pattern = '(a)\\1'\nengine = 're2'",
            r"parse\.pattern: the linear-time engine \(RE2\) cannot run it",
        ),
        (UPDATE_PATH, "path = '/let~2ters' #", r"update\.path: bad JSON pointer '/let~2ters'"),
        (UPDATE_PATH, "path = '/nope' #", r"update\.path: /nope: no key 'nope'$"),
        (UPDATE_PATH, "path = 'letters..0' #", r"update\.path: bad path 'letters\.\.0'"),
        ('rule = "append"', 'rule = "merge"', r"update\.rule: Invalid enum value 'merge'$"),
        ("max_steps = 5", "max_steps = '5'", r"max_steps: Expected `int`, got `str`$"),
        ("max_steps = 5", "max_steps = 0", r"max_steps: must be at least 1, got 0$"),
        ("[update]", "[updates]", r"updates: unknown key$"),
        (
            "length = 6",
            "length = 6\nequals = 3",
            r"done: give exactly one of equals, length and matches",
        ),
        ("max_steps = 5", "max_steps = = 5", r"not TOML: Invalid value \(at line \d+"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "letters.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: "), line
    assert re.search(expected, line.removeprefix(f"{path}: ")), line
    assert isinstance(caught.value, ConfigError)  # the CLI's usage errors: exit 2


def test_a_bad_file_fails_the_cli_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(EXAMPLE.read_text().replace("[prompt]", "[prompt]\nusr = 'x'"))
    line = one_error_line(maker(tmp_path, "run", "--task-file", "bad.toml", "--log", "l.db"))
    assert line == "maker: error: bad.toml: prompt.usr: unknown key"
    assert not (tmp_path / "l.db").exists()


def test_values_json_cannot_hold_are_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "dated.toml"
    path.write_text(
        EXAMPLE.read_text().replace('letters = ["a"]', 'letters = ["a"]\nat = 1979-05-27')
    )
    with pytest.raises(TaskFileError, match=r"dated\.toml: state: must be JSON: \$\.at is a date"):
        load_task_file(path)


def test_a_simulate_section_whose_response_would_not_parse_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"simulate\.response: the initial state's answer"):
        TaskFile(**spec(simulate={"response": "It is ${answer}."}))
    with pytest.raises(ConfigError, match=r"simulate\.table\.e: must be a string"):
        TaskFile(**spec(simulate={"table": {**NEXT, "e": 5}}))


# -- templates look data up, nothing else ---------------------------------------------------


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("${state.__class__}", r"\$\{state\.__class__\}: no key '__class__'"),
        ("${state.letters.append}", r"'append' is not an index of a list"),
        ("${state.letters.0.upper}", r"'upper' is inside a string, which has no keys"),
        ("${os.system}", r"unknown name 'os' \(a template here reads \$\{state\}\)"),
        ("${__builtins__}", r"unknown name '__builtins__'"),
        ("costs $5", r"a '\$' on line 1 starts no placeholder"),
    ],
)
def test_a_template_cannot_reach_attributes_or_names(user: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^prompt\.user: .*{message}"):
        TaskFile(**spec(prompt={"user": user}))


def test_code_and_format_fields_in_a_template_are_only_text() -> None:
    user = (
        "{0.__class__.__mro__} {state.__class__} __import__('os').system('x') "
        "$$HOME ${state.letters.0}"
    )
    task = TaskFile(**spec(prompt={"user": user}))
    assert task.prompt(task.initial_state()).user == (
        "{0.__class__.__mro__} {state.__class__} __import__('os').system('x') $HOME a"
    )


def test_values_render_as_strings_or_compact_json() -> None:
    task = TaskFile(
        **spec(
            state={"letters": ["a"], "n": 3, "ok": True, "nested": {"x": [1, None]}},
            prompt={"user": "${state.n} ${state.ok} ${state.nested} ${state.letters.-1} ${state}"},
        )
    )
    assert task.prompt(task.initial_state()).user == (
        '3 true {"x":[1,null]} a {"letters":["a"],"n":3,"ok":true,"nested":{"x":[1,null]}}'
    )


def test_a_template_the_state_no_longer_fills_is_a_state_error() -> None:
    task = TaskFile(**spec(prompt={"user": "first ${state.letters.0}"}))
    with pytest.raises(StateError, match=r"prompt\.user: \$\{state\.letters\.0\}: index 0 is out"):
        task.prompt({"letters": []})


# -- the update rules ------------------------------------------------------------------------


def test_append_adds_the_answer_to_the_list_and_leaves_the_old_state_alone() -> None:
    task = TaskFile(**spec())
    first = task.initial_state()
    second = task.apply(first, task.parse("so: next = b"))
    assert second == {"letters": ["a", "b"]}
    assert first == {"letters": ["a"]}  # states are values: a step never edits the last one
    assert task.initial_state() == {"letters": ["a"]}


def test_set_replaces_a_field_by_dotted_path_or_pointer_and_may_add_a_key() -> None:
    state = {"board": {"a/b": [0, 0]}, "last": "a"}

    def board(**changes: Any) -> dict[str, Any]:
        return spec(
            state=state,
            prompt={"user": "The state: ${state}"},
            done={"path": "last", "equals": "z"},
            simulate=None,
            **changes,
        )

    by_pointer = TaskFile(**board(update={"rule": "set", "path": "/board/a~1b/1"}))
    assert by_pointer.apply(state, "x") == {"board": {"a/b": [0, "x"]}, "last": "a"}
    by_dots = TaskFile(**board(update={"rule": "set", "path": "last"}))
    assert by_dots.apply(state, "b") == {"board": {"a/b": [0, 0]}, "last": "b"}
    new_key = TaskFile(**board(update={"rule": "set", "path": "board.count"}))
    assert new_key.apply(state, "1")["board"] == {"a/b": [0, 0], "count": "1"}
    assert state == {"board": {"a/b": [0, 0]}, "last": "a"}
    with pytest.raises(ConfigError, match=r"update\.path: board\.missing\.x: no key 'missing'"):
        TaskFile(**board(update={"rule": "set", "path": "board.missing.x"}))


def test_replace_makes_the_answer_the_state() -> None:
    task = TaskFile(
        **spec(
            state={"n": 0},
            prompt={"user": "n is ${state.n}"},
            parse={"pattern": None, "schema": {"type": "object", "required": ["n"]}},
            update={"rule": "replace"},
            done={"path": "n", "equals": 2},
            simulate=None,
        )
    )
    answer = task.parse('```json\n{"n": 1}\n```')
    assert task.apply({"n": 0}, answer) == {"n": 1}
    with pytest.raises(
        ConfigError, match=r"update\.path: the replace rule replaces the whole state"
    ):
        TaskFile(**spec(update={"rule": "replace", "path": "letters"}))


def test_max_chars_is_a_red_flag_before_parsing() -> None:
    task = TaskFile(**spec(parse={"max_chars": 20}))
    assert task.parse("next = b") == "b"
    with pytest.raises(RedFlag) as flag:
        task.parse("let me think " * 3 + "next = b")
    assert flag.value.reason == "too_long"


# -- done tests and the step budget -----------------------------------------------------------


def test_done_by_length_equality_or_pattern() -> None:
    by_length = TaskFile(**spec(done={"path": "letters", "length": 2}))
    assert not by_length.is_done({"letters": ["a"]})
    assert by_length.is_done({"letters": ["a", "b"]})
    # JSON equality: true is not 1.
    by_value = TaskFile(
        **spec(state={"letters": ["a"], "ok": 0}, done={"path": "ok", "equals": True})
    )
    assert not by_value.is_done({"letters": ["a"], "ok": 1})
    assert by_value.is_done({"letters": ["a"], "ok": True})
    by_pattern = TaskFile(**spec(done={"path": "letters.-1", "matches": "^[d-z]$"}))
    assert not by_pattern.is_done({"letters": ["a", "c"]})
    assert by_pattern.is_done({"letters": ["a", "d"]})
    with pytest.raises(StateError, match=r"done\.path: letters\.-1: index -1 is out of range"):
        by_pattern.is_done({"letters": []})


def test_a_run_that_reaches_its_budget_undone_fails_and_says_so(tmp_path: Path) -> None:
    task = TaskFile(**spec(max_steps=3, done={"path": "letters", "length": 6}))
    result = run_on_sim(task, tmp_path)
    assert not result.ok
    assert result.steps == 3
    assert "not done after its budget of 3 steps" in result.reason


# -- the parameters are the file -----------------------------------------------------------


def test_the_recorded_params_rebuild_the_same_task_without_the_file(tmp_path: Path) -> None:
    copy = tmp_path / "letters.toml"
    copy.write_text(EXAMPLE.read_text())
    task = load_task_file(copy)
    params = json.loads(json.dumps(task.params()))  # as run_started stores them
    copy.unlink()
    again = make_task("taskfile", params)
    assert isinstance(again, TaskFile)
    assert again.params() == params
    state = task.initial_state()
    for _ in range(3):
        assert again.prompt(state) == task.prompt(state)
        state = task.apply(state, task.oracle(state))
    assert again.state_from_json(task.state_to_json(state)) == state
    with pytest.raises(ConfigError, match=r"^prompt\.usr: unknown key"):
        make_task("taskfile", {**params, "prompt": {**params["prompt"], "usr": "x"}})


def test_a_service_runs_a_request_s_task_file_on_the_linear_time_engine() -> None:
    params = TaskFile.with_engine(spec(parse={"pattern": r"(a)\1"}), "re2")
    with pytest.raises(ConfigError, match=r"parse\.pattern: the linear-time engine"):
        make_task("taskfile", params)


# -- the simulator --------------------------------------------------------------------------


def test_the_simulated_model_runs_a_task_file_to_its_end(tmp_path: Path) -> None:
    task = TaskFile(**spec())
    assert isinstance(task.simulator(), TaskFileSimulator)
    result = run_on_sim(task, tmp_path, p=0.75, seed=3)
    assert result.ok, result.reason
    assert result.final_state == {"letters": ["a", "b", "c", "d", "e"]}
    assert result.samples > 2 * result.steps  # wrong answers were drawn, and outvoted


def test_two_task_files_share_one_simulated_model(tmp_path: Path) -> None:
    # A table of JSON answers by a key, a schema, the replace rule and an equals test...
    counter = TaskFile(
        max_steps=3,
        state={"n": 0},
        prompt={"user": "n is ${state.n}. Reply with the JSON object of the next n."},
        parse={"schema": {"type": "object", "required": ["n"]}},
        update={"rule": "replace"},
        done={"path": "n", "equals": 3},
        simulate={"key": "${state.n}", "table": {"0": {"n": 1}, "1": {"n": 2}, "2": {"n": 3}}},
    )
    # ... and an answer template with wrong answers of its own, the set rule and a pattern.
    echo = TaskFile(
        max_steps=2,
        state={"word": "ping", "said": "-"},
        prompt={"user": "Say ${state.word} (you said ${state.said})."},
        parse={"pattern": r"SAY (\w+)"},
        update={"rule": "set", "path": "/said"},
        done={"path": "said", "matches": "^ping$"},
        simulate={
            "answer": "${state.word}",
            "wrong": ["pong", "${state.said}x"],
            "response": "SAY ${answer}",
        },
    )
    model = SimulatedModel(sim_config("ideal", p=0.8))

    async def go() -> list[Any]:
        async with Engine(log=tmp_path / "both.db", client=model) as engine:
            return [await engine.run(t, policy=Policy(k=2), seed=5) for t in (counter, echo)]

    first, second = anyio.run(go)
    assert (first.ok, first.final_state) == (True, {"n": 3})
    assert (second.ok, second.final_state) == (True, {"word": "ping", "said": "ping"})


def test_without_a_simulate_section_there_is_no_oracle_and_no_simulator() -> None:
    task = TaskFile(**spec(simulate=None))
    assert task.simulator() is None
    assert task.oracle(task.initial_state()) is None


# -- from the command line ------------------------------------------------------------------


def test_a_task_file_runs_on_sim_and_replays_after_the_file_is_deleted(tmp_path: Path) -> None:
    (tmp_path / "letters.toml").write_text(EXAMPLE.read_text())
    done = maker(
        tmp_path, "run", "--task-file", "letters.toml", "--log", "l.db", "--json", "--p", "0.8"
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert (run["status"], run["steps"]) == ("succeeded", 5)
    assert run["task"] == "taskfile"
    assert run["task_params"]["state"] == {"letters": ["a"]}
    (tmp_path / "letters.toml").unlink()
    verified = maker(tmp_path, "replay", "--verify", "l.db")
    assert verified.returncode == 0, verified.stderr
    assert "reproduced exactly" in verified.stdout
    # show, resume and the README's other commands: the README's test below.


def test_the_cli_says_which_task_options_clash(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text(EXAMPLE.read_text())
    line = one_error_line(maker(tmp_path, "run", "hanoi", "--task-file", "t.toml", "--log", "l.db"))
    assert "give --task-file or TASK, not both" in line
    with pytest.raises(click.UsageError, match="--disks does not apply to --task-file"):
        build_task(None, disks=3, task_file=tmp_path / "t.toml")
    with pytest.raises(click.UsageError, match="--params does not apply to --task-file"):
        build_task(None, params_json="{}", task_file=tmp_path / "t.toml")
    assert isinstance(build_task(None, task_file=tmp_path / "t.toml"), TaskFile)


def test_the_readme_task_file_example_runs_as_written(tmp_path: Path) -> None:
    """The "Task files" section's file is the example's, saved as letters.toml, and its
    command lines run in that directory, the file deleted where they say."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Task files\n", 1)[1].split("\n### ", 1)[0]
    example = re.findall(r"```toml\n(.*?)```", section, flags=re.S)[0]
    assert example == EXAMPLE.read_text()
    (tmp_path / "letters.toml").write_text(example)
    commands = re.findall(r"```sh\n(.*?)```", section, flags=re.S)[0]
    ran = []
    for line in commands.strip().splitlines():
        words = shlex.split(line, comments=True)
        if words[0] == "rm":
            (tmp_path / words[1]).unlink()
            continue
        assert words[0] == "maker", line
        done = subprocess.run(
            [sys.executable, "-m", *words],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, (line, done.stderr)
        ran.append(words[1])
        if words[1] == "replay" and "--verify" in words:
            assert "reproduced exactly" in done.stdout
    assert ran == ["run", "calibrate", "plan", "show", "replay", "replay", "resume"]


@pytest.mark.anyio
async def test_a_service_runs_a_task_file_only_when_prompts_are_allowed_and_on_re2(
    tmp_path: Path,
) -> None:
    """A task file in a request is prompts of the client's choosing on the owner's key, and
    patterns of the client's choosing on the server's loop: the prompt task's gate and engine."""
    from .test_service_guard import AUTH, answer, guarded

    body = {"task": "taskfile", "params": spec(parse={"engine": "re"}), "k": 1, "max_samples": 3}
    async with guarded(tmp_path / "closed.db") as (_, _, http):
        status, _, refused = await answer(http, "POST", "/runs", json=body, headers=AUTH)
        assert status == 403
        assert "--allow-prompts" in refused["error"]
    async with guarded(tmp_path / "open.db", allow_prompts=True) as (engine, _, http):
        status, _, started = await answer(http, "POST", "/runs", json=body, headers=AUTH)
        assert status == 201, started
        handle = engine.handle(started["run_id"])
        if handle is not None:
            assert (await handle.result()).ok
        info = await engine.log.run(started["run_id"])
        backref = {**body, "params": spec(parse={"pattern": r"(a)\1"})}
        status, _, bad = await answer(http, "POST", "/runs", json=backref, headers=AUTH)
        assert status == 400
        assert "RE2" in bad["error"]
    assert info.started.task == "taskfile"
    assert info.started.task_params["parse"]["engine"] == "re2"
