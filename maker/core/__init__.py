"""The core: what MAKER decides, with no I/O. The vote (tally), red flags and the judge of a
response, the paper's formulas, adaptive k, the policy, the task and client protocols,
planning and pricing.

Everything above builds on these; nothing here imports from another layer of :mod:`maker`.
"""

from ._adaptive import AdaptiveK, PEstimate
from ._client import Client, Completion, Probe, SampleRequest
from ._errors import (
    ClientError,
    ConfigError,
    MakerError,
    RedFlag,
    StateError,
    TaskPluginError,
    UnknownTaskError,
    UntrustedPluginError,
)
from ._formulas import (
    expected_cost,
    expected_cost_exact,
    expected_samples_per_step,
    expected_votes_per_step,
    k_min,
    p_run,
    p_step,
    sample_cost,
    undecided_share,
)
from ._judge import judge
from ._matchers import EXACT, Embedder, Grouping, Matcher, matcher_spec
from ._plan import ModelEstimate, ModelPlan, Plan, estimates_from_calibration, plan
from ._policy import (
    CalibrationRecord,
    Hedge,
    Policy,
    PolicyRecord,
    RedFlagRecord,
    recorded_policy,
)
from ._redflags import RedFlagCheck, RedFlagRules
from ._simulator import Simulator
from ._tally import Tally, VoteRule
from ._task import Prompt, Task
from ._version import __version__

__all__ = [
    "EXACT",
    "AdaptiveK",
    "CalibrationRecord",
    "Client",
    "ClientError",
    "Completion",
    "ConfigError",
    "Embedder",
    "Grouping",
    "Hedge",
    "MakerError",
    "Matcher",
    "ModelEstimate",
    "ModelPlan",
    "PEstimate",
    "Plan",
    "Policy",
    "PolicyRecord",
    "Probe",
    "Prompt",
    "RedFlag",
    "RedFlagCheck",
    "RedFlagRecord",
    "RedFlagRules",
    "SampleRequest",
    "Simulator",
    "StateError",
    "Tally",
    "Task",
    "TaskPluginError",
    "UnknownTaskError",
    "UntrustedPluginError",
    "VoteRule",
    "__version__",
    "estimates_from_calibration",
    "expected_cost",
    "expected_cost_exact",
    "expected_samples_per_step",
    "expected_votes_per_step",
    "judge",
    "k_min",
    "matcher_spec",
    "p_run",
    "p_step",
    "plan",
    "recorded_policy",
    "sample_cost",
    "undecided_share",
]
