"""The one resolver of task names (:func:`maker.tasks.make_task`): references to a module's
factory, entry points of installed packages, the trust rule for names read from data, the
errors of a missing or broken plugin, and a plugin's simulator on the simulated model."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from maker import (
    ConfigError,
    Engine,
    Policy,
    SimulatedModel,
    Task,
    TaskPluginError,
    UnknownTaskError,
    UntrustedPluginError,
)
from maker.tasks import (
    BUILTIN_SIMULATORS,
    TASK_ENTRY_POINTS,
    Hanoi,
    is_reference,
    known_task_names,
    make_task,
    plugin_allowed,
)

from ._plugin import COUNTING

Write = Callable[[str], str]


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Write]:
    """Write a module's source under a fresh name on sys.path; its name. Forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"plugin_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_a_task_subclass_and_a_function_are_factories(module: Write) -> None:
    name = module(COUNTING)
    by_class = make_task(f"{name}:Counting", {"n": 4})
    by_function = make_task(f"{name}:counting", {"n": 4})
    for task, reference in ((by_class, f"{name}:Counting"), (by_function, f"{name}:counting")):
        assert isinstance(task, Task)
        assert task.name == reference  # what run_started records, and what rebuilds it
        assert task.params() == {"n": 4}
        assert task.max_steps() == 4
    assert type(by_class) is type(by_function)
    # The class keeps its own name: only the instance is named after the reference.
    assert type(by_class).name == "custom"


def test_a_task_that_keeps_no_params_gives_back_those_it_was_built_from(module: Write) -> None:
    name = module(
        "from maker.tasks import Hanoi\n"
        "class Plain(Hanoi):\n"
        "    params = __import__('maker').Task.params\n"
        "def make(disks, note='x'):\n"
        "    return Plain(disks)\n"
    )
    task = make_task(f"{name}:make", {"disks": 3, "note": "y"})
    given = task.params()
    assert given == {"disks": 3, "note": "y"}
    given["disks"] = 99  # a copy each time: the recorded parameters cannot be changed
    assert task.params() == {"disks": 3, "note": "y"}
    rebuilt = make_task(task.name, task.params())
    assert rebuilt.initial_state() == task.initial_state()


def test_a_missing_module_or_attribute_is_one_line_naming_the_plugin(module: Write) -> None:
    with pytest.raises(TaskPluginError, match=r"'nosuchmodule_x\.y:f'.*no module named") as exc:
        make_task("nosuchmodule_x.y:f", {})
    assert exc.value.reference == "nosuchmodule_x.y:f"
    name = module(COUNTING)
    with pytest.raises(TaskPluginError, match=rf"{name}:Nope.*has no attribute 'Nope'"):
        make_task(f"{name}:Nope", {})
    with pytest.raises(TaskPluginError, match=r"_SYSTEM is a str, not a task factory"):
        make_task(f"{name}:_SYSTEM", {})
    for bad in ("counting:", ":Counting", "a b:c", "a:b:c"):
        with pytest.raises(TaskPluginError, match="not a reference"):
            make_task(bad, {})


def test_a_module_that_fails_to_import_is_one_line(module: Write) -> None:
    broken = module("raise RuntimeError('the plugin is broken')\n")
    with pytest.raises(TaskPluginError, match=r"importing .* failed: RuntimeError: the plugin"):
        make_task(f"{broken}:f", {})
    # A module the plugin needs that is missing is the plugin's failure, not a missing plugin.
    needs = module("import nosuchdependency_q\n")
    with pytest.raises(TaskPluginError, match=rf"importing {needs} failed: .*nosuchdependency_q"):
        make_task(f"{needs}:f", {})


def test_a_factory_that_raises_or_returns_no_task_is_one_line(module: Write) -> None:
    name = module(
        COUNTING
        + "\ndef raises():\n    raise KeyError('oops')\n"
        + "def number():\n    return 7\n"
        + "class Abstract(Task[int, int]):\n    pass\n"
    )
    with pytest.raises(TaskPluginError, match=r":raises': the factory raised KeyError: 'oops'"):
        make_task(f"{name}:raises", {})
    with pytest.raises(TaskPluginError, match="returned int, not a maker Task"):
        make_task(f"{name}:number", {})
    with pytest.raises(TaskPluginError, match="the factory raised TypeError"):
        make_task(f"{name}:Abstract", {})
    with pytest.raises(TaskPluginError, match="ValueError: n must be at least 1, got 0"):
        make_task(f"{name}:Counting", {"n": 0})


def test_params_errors_name_the_field(module: Write) -> None:
    name = module(
        COUNTING
        + "\ndef strict(size):\n    return Counting(size)\n"
        + "def validated(n):\n"
        + "    from maker import ConfigError\n"
        + "    raise ConfigError('n', 'too many')\n"
        + "def anything(**kwargs):\n    return Counting(len(kwargs))\n"
    )
    with pytest.raises(ConfigError, match=rf"^m: not a parameter of task '{name}:Counting'") as e:
        make_task(f"{name}:Counting", {"m": 3})
    assert e.value.field == "m"
    with pytest.raises(ConfigError, match=rf"^size: required by task '{name}:strict'"):
        make_task(f"{name}:strict", {})
    with pytest.raises(ConfigError, match=rf"^n: too many \(task '{name}:validated'\)") as e:
        make_task(f"{name}:validated", {"n": 1})
    assert e.value.field == "n"
    with pytest.raises(ConfigError, match=r"^params: must be an object"):
        make_task(f"{name}:Counting", [1])  # type: ignore[arg-type]
    assert make_task(f"{name}:anything", {"a": 1, "b": 2}).max_steps() == 2


def test_a_name_read_from_data_imports_only_a_trusted_plugin(module: Write, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    name = module(COUNTING + f"\nopen({str(marker)!r}, 'w').close()\n")
    reference = f"{name}:Counting"
    for allowed in ((), ("other",), (f"{name}:counting",), (name[:-1],)):
        with pytest.raises(UntrustedPluginError, match="--allow-plugin") as exc:
            make_task(reference, {"n": 2}, allow_plugins=allowed)
        assert isinstance(exc.value, TaskPluginError)
        assert not marker.exists()  # refused before anything ran
        assert name not in sys.modules
    for allowed in ((reference,), (name,)):
        assert make_task(reference, {"n": 2}, allow_plugins=allowed).max_steps() == 2
    assert marker.exists()
    # Built-in names need no trust.
    assert make_task("hanoi", {"disks": 2}, allow_plugins=()).max_steps() == 3


def test_plugin_allowed_trusts_a_reference_its_module_or_its_package() -> None:
    assert plugin_allowed("a.b.c:f", ["a.b.c:f"])
    assert plugin_allowed("a.b.c:f", ["a.b.c"])
    assert plugin_allowed("a.b.c:f", ["a"])
    assert not plugin_allowed("a.b.c:f", ["a.b.c:g", "a.b.cd", "a.bb", "b"])
    assert not plugin_allowed("ab:f", ["a"])
    assert is_reference("x:y")
    assert not is_reference("hanoi")


def _install(root: Path, dist: str, entries: dict[str, str]) -> None:
    """A distribution's metadata as an installer leaves it: a dist-info directory with
    METADATA and entry_points.txt."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{TASK_ENTRY_POINTS}]\n{lines}")


def test_an_installed_package_registers_task_names(
    module: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = module(COUNTING)
    site = tmp_path / "site"
    dist = f"dist_{uuid.uuid4().hex[:8]}"
    _install(
        site,
        dist,
        {
            "count-up": f"{name}:Counting",
            "count-fn": f"{name}:counting",
            "broken-task": "nosuchmodule_z:f",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    assert {"count-up", "count-fn", "broken-task", "hanoi"} <= set(known_task_names())
    task = make_task("count-up", {"n": 3})
    assert task.name == "count-up"  # recorded by its registered name, rebuilt through it
    assert task.params() == {"n": 3}
    # Installed is trusted: a log that names an entry point rebuilds it without --allow-plugin.
    assert make_task("count-fn", {"n": 2}, allow_plugins=()).max_steps() == 2
    with pytest.raises(TaskPluginError, match=r"'broken-task': entry point nosuchmodule_z:f did"):
        make_task("broken-task", {})
    with pytest.raises(UnknownTaskError, match="count-fn, count-up, hanoi"):
        make_task("collatz", {})
    # Built-in names come first: an entry point cannot take one over.
    _install(site, f"{dist}x", {"hanoi": f"{name}:Counting"})
    assert isinstance(make_task("hanoi", {"disks": 2}), Hanoi)


def test_a_plugins_simulator_lets_the_simulated_model_run_it(module: Write, tmp_path: Path) -> None:
    name = module(COUNTING)
    task = make_task(f"{name}:Counting", {"n": 12})
    model = SimulatedModel(preset="ideal")

    async def go() -> tuple[bool, object]:
        async with Engine(log=tmp_path / "log.db", client=model) as engine:
            result = await engine.run(task, policy=Policy(k=2), seed=1)
        return result.ok, result.final_state

    assert anyio.run(go) == (True, 12)
    # The engine gave the model the task's simulator, once however many runs it starts.
    anyio.run(go)
    model.add_simulator(task.simulator())  # type: ignore[arg-type]
    assert len(model._simulators) == len(BUILTIN_SIMULATORS) + 1
