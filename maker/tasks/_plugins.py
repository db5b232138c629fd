"""One resolver of task names: built-in names, ``package.module:factory`` references and the
names installed packages register in the ``maker.tasks`` entry point group.

Every place that turns a name into a task goes through :func:`make_task`: the CLI's ``--task``,
the service's ``POST /runs``, the MCP ``run`` tool, and everything that rebuilds a task from a
log's ``run_started`` (replay, resume, calibration, the servers' status). A task built from a
reference or an entry point is named after it (its ``name`` is what ``run_started`` records),
so the log alone rebuilds it.

Importing a module runs its code. A name the user typed is theirs to import; a name read from
data (a log someone gave you, a request) is imported only when the user allowed it:
``allow_plugins`` lists what is trusted, and a reference outside it raises
:class:`~maker.UntrustedPluginError` before anything is imported. Entry points are not gated:
an installed package that registers one has already been trusted with the environment.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Callable, Collection
from typing import Any

from ..core._errors import ConfigError, TaskPluginError, UnknownTaskError, UntrustedPluginError
from ..core._task import Task
from ._arithmetic import Arithmetic
from ._hanoi import Hanoi
from ._prompt import PromptTask
from ._sort import Sort
from ._taskfile import TaskFile
from ._toposort import Toposort

TASK_ENTRY_POINTS = "maker.tasks"
"""The entry point group in which an installed package registers its tasks: each entry point's
name is a task name, its object a factory (a function or a :class:`~maker.Task` subclass)."""

BUILTIN_TASKS: dict[str, type[Task[Any, Any]]] = {
    Arithmetic.name: Arithmetic,
    Hanoi.name: Hanoi,
    PromptTask.name: PromptTask,
    TaskFile.name: TaskFile,
    Sort.name: Sort,
    Toposort.name: Toposort,
}
"""The built-in task classes by :attr:`Task.name`."""

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_REFERENCE = re.compile(rf"({_DOTTED}):({_DOTTED})")


def is_reference(name: str) -> bool:
    """Whether ``name`` is meant as a ``package.module:factory`` reference (it has a colon).

    >>> is_reference("hanoi"), is_reference("mytasks.counting:Counting")
    (False, True)
    """
    return ":" in name


def plugin_allowed(reference: str, allow_plugins: Collection[str]) -> bool:
    """Whether ``allow_plugins`` trusts ``reference``: it names the reference itself, its
    module, or a package the module is in.

    >>> plugin_allowed("mytasks.counting:make", ["mytasks"])
    True
    >>> plugin_allowed("mytasks.counting:make", ["mytasks.counting:other", "my"])
    False
    """
    module = reference.partition(":")[0]
    return any(
        entry in (reference, module) or module.startswith(entry + ".") for entry in allow_plugins
    )


def make_task(
    name: str, params: dict[str, Any], *, allow_plugins: Collection[str] | None = None
) -> Task[Any, Any]:
    """Build a task from its name and parameters: a built-in name, a reference
    ``package.module:factory``, or a name an installed package registers in the
    :data:`TASK_ENTRY_POINTS` group, in that order.

    A factory is anything callable with ``params`` as keyword arguments that returns a
    :class:`~maker.Task`: a function, or a Task subclass itself. The task it returns is named
    after the reference (or the entry point), and, when its class does not say its own
    parameters (:meth:`Task.params`), it gives back ``params``: ``run_started`` records both,
    and they rebuild it.

    ``allow_plugins`` is for names that come from data rather than from the user: None (the
    default) imports any reference; a collection imports only those :func:`plugin_allowed`
    trusts, and raises :class:`~maker.UntrustedPluginError` for the others, before importing.

    Raises :class:`maker.UnknownTaskError` for an unknown name, :class:`maker.ConfigError`
    naming the field for a missing, unknown or invalid parameter, and
    :class:`maker.TaskPluginError` naming the plugin when it cannot be imported or built.

    >>> make_task("arithmetic", {"steps": 3}).params()
    {'steps': 3, 'digits': 6, 'seed': 0}
    >>> make_task("maker.tasks:Hanoi", {"disks": 2}).name
    'maker.tasks:Hanoi'
    """
    if not isinstance(params, dict):
        raise ConfigError("params", f"must be an object, got {type(params).__name__}")
    cls = BUILTIN_TASKS.get(name)
    if cls is not None:
        return _built_in(name, cls, params)
    if is_reference(name):
        if allow_plugins is not None and not plugin_allowed(name, allow_plugins):
            module = name.partition(":")[0]
            raise UntrustedPluginError(
                name,
                "read from a log or a request, not named by you, and importing it would run "
                f"its code; if you trust it, allow it (--allow-plugin {module})",
            )
        factory = _import(name)
    else:
        factory = _entry_point(name)
    return _build(name, factory, params)


def known_task_names() -> list[str]:
    """The built-in task names and those installed packages register, sorted."""
    return sorted({*BUILTIN_TASKS, *(ep.name for ep in _entry_points())})


def _built_in(name: str, cls: type[Task[Any, Any]], params: dict[str, Any]) -> Task[Any, Any]:
    _check_params(name, cls, params)
    try:
        return cls(**params)
    except TypeError as exc:  # a constructor that skipped validating a type
        raise ConfigError("params", str(exc)) from exc


def _entry_points() -> importlib.metadata.EntryPoints:
    return importlib.metadata.entry_points(group=TASK_ENTRY_POINTS)


def _entry_point(name: str) -> Callable[..., Any]:
    found = [ep for ep in _entry_points() if ep.name == name]
    if not found:
        raise UnknownTaskError(name, known_task_names())
    entry = found[0]
    try:
        loaded: Callable[..., Any] = entry.load()
    except Exception as exc:  # a broken package: its import error is the message
        raise TaskPluginError(
            name, f"entry point {entry.value} did not load: {_described(exc)}"
        ) from None
    return loaded


def _import(reference: str) -> Callable[..., Any]:
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise TaskPluginError(reference, "not a reference: write package.module:factory")
    module_name, attribute = match.groups()
    _search_working_directory()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise TaskPluginError(
                reference,
                f"no module named {missing!r} (a plugin is imported from PYTHONPATH, the "
                "installed packages or the working directory)",
            ) from None
        raise TaskPluginError(reference, f"importing {module_name} failed: {exc}") from None
    except Exception as exc:  # the module's own code raised while it was imported
        raise TaskPluginError(
            reference, f"importing {module_name} failed: {_described(exc)}"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TaskPluginError(
                reference, f"module {module_name} has no attribute {attribute!r}"
            ) from None
    if not callable(found):
        raise TaskPluginError(
            reference, f"{attribute} is a {type(found).__name__}, not a task factory"
        )
    return found  # type: ignore[no-any-return]


def _search_working_directory() -> None:
    """Let a plugin in the working directory be found, as ``python -m`` would find it: the
    ``maker`` script's own path is its install directory. Searched last, so that nothing in
    the working directory hides an installed module."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def _build(name: str, factory: Callable[..., Any], params: dict[str, Any]) -> Task[Any, Any]:
    _check_params(name, factory, params)
    try:
        task = factory(**params)
    except ConfigError as exc:  # the factory's own validation, naming its field
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise ConfigError(exc.field, f"{message} (task {name!r})") from None
    except Exception as exc:
        raise TaskPluginError(name, f"the factory raised {_described(exc)}") from None
    if not isinstance(task, Task):
        raise TaskPluginError(name, f"the factory returned {type(task).__name__}, not a maker Task")
    try:
        # The name and parameters run_started records are the ones that rebuild the task.
        object.__setattr__(task, "name", name)
        if type(task).params is Task.params:
            given = copy.deepcopy(params)
            object.__setattr__(task, "params", lambda: copy.deepcopy(given))
    except (AttributeError, TypeError) as exc:  # __slots__ without room for them
        raise TaskPluginError(name, f"cannot record what rebuilds the task: {exc}") from None
    return task


def _check_params(name: str, factory: Callable[..., Any], params: dict[str, Any]) -> None:
    """Name the field of a parameter the factory does not take, or one it needs."""
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: the call will tell
        return
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    by_keyword = {
        key: param
        for key, param in accepted.items()
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for key in params:
        if key not in by_keyword and not open_ended:
            raise ConfigError(key, f"not a parameter of task {name!r}")
    for key, param in accepted.items():
        required = param.default is inspect.Parameter.empty
        if param.kind is inspect.Parameter.POSITIONAL_ONLY and required:
            raise ConfigError(key, f"task {name!r} takes it by position; a factory takes keywords")
        if key in by_keyword and required and key not in params:
            raise ConfigError(key, f"required by task {name!r}")


def _described(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
