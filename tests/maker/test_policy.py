"""A recorded policy reads back as the policy that recorded it: ``Policy.from_json``."""

from __future__ import annotations

from pathlib import Path

import pytest

from events import RunStarted
from maker import AdaptiveK, Completion, ConfigError, Engine, Policy, RedFlagRules
from replay import load_events

from ._fakes import Count, ScriptedClient


def no_todo(completion: Completion) -> str | None:
    return "todo" if "TODO" in completion.text else None


POLICIES = {
    "default": Policy(),
    "every field": Policy(
        k=4,
        rule="first",
        first_temperature=0.2,
        temperature=0.7,
        max_tokens=900,
        max_samples_per_step=40,
        max_attempts=2,
        speculative=3,
        red_flags=RedFlagRules(max_output_tokens=None, flag_truncated=False),
    ),
    "adaptive": Policy(adaptive=AdaptiveK(target=0.9, k_max=8), max_samples_per_step=50),
}


@pytest.mark.parametrize("policy", POLICIES.values(), ids=list(POLICIES))
def test_from_json_is_the_inverse_of_the_recorded_form(policy: Policy) -> None:
    assert Policy.from_json(policy.describe()) == policy


def test_user_checks_are_given_again_by_name_or_refused() -> None:
    policy = Policy(red_flags=RedFlagRules(checks=(no_todo,)))
    recorded = policy.describe()
    assert recorded["red_flags"]["checks"] == ["no_todo"]
    assert Policy.from_json(recorded, checks=(no_todo,)) == policy
    with pytest.raises(ConfigError, match="no_todo"):
        Policy.from_json(recorded)


def test_what_a_recorded_policy_leaves_out_takes_the_policys_defaults() -> None:
    # An older log's policy may lack a field added since: it reads back at today's default.
    assert Policy.from_json({"k": 2}) == Policy(k=2)
    assert Policy.from_json({"k": 2, "red_flags": {"flag_truncated": False}}) == Policy(
        k=2, red_flags=RedFlagRules(flag_truncated=False)
    )
    with pytest.raises(ConfigError, match="k"):
        Policy.from_json({"k": 0})


@pytest.mark.anyio
async def test_a_runs_run_started_reads_back_as_its_policy(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    policy = POLICIES["every field"]
    async with Engine(log=path, client=ScriptedClient()) as engine:
        await engine.run(Count(2), policy=policy, seed=1)
    started = (await load_events(path))[0]
    assert isinstance(started, RunStarted)
    assert Policy.from_json(started.policy) == policy


def test_the_record_has_every_field_of_the_policy_with_its_default() -> None:
    """One list of fields: a field added to Policy and not to PolicyRecord fails here, not as
    a policy that silently stops being recorded."""
    import dataclasses

    import msgspec

    from maker.core import PolicyRecord, RedFlagRecord

    policy_fields = {f.name: f for f in dataclasses.fields(Policy)}
    record_fields = {f.name: f for f in msgspec.structs.fields(PolicyRecord)}
    assert list(record_fields) == list(policy_fields)
    default = Policy()
    for name, f in record_fields.items():
        if name not in ("red_flags", "adaptive"):
            assert f.default == getattr(default, name), name
    flags = {f.name: f.default for f in msgspec.structs.fields(RedFlagRecord)}
    assert flags == {f.name: f.default for f in dataclasses.fields(RedFlagRules)}


def test_a_calibration_record_is_not_a_voting_policy() -> None:
    from maker.core import CalibrationRecord, recorded_policy

    recorded = recorded_policy({"mode": "calibration", "samples": 30, "temperature": 0.5})
    assert recorded == CalibrationRecord(samples=30, temperature=0.5)
    with pytest.raises(ConfigError, match="calibration"):
        Policy.from_json(recorded.to_json())
    with pytest.raises(ConfigError, match="does not read back"):
        recorded_policy({"k": "three"})
