"""The stored sweep spec: everything the controller needs to drive a sweep, ``<parent prefix>sweep.json``.

:class:`~cluster.sweep.config.HyperDriveConfig` writes it at submit; the sweep's state and driver read it
(:mod:`cluster.sweep.state`, :mod:`cluster.sweep.driver`). Its own module, so that the readers do not import the
submitting side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from cluster.errors import PayloadError
from cluster.estimator import RunConfiguration
from cluster.schema import Number, PositiveNumber, Record, WholeNumber, load, record
from cluster.sweep.policy import POLICIES, EarlyTerminationPolicy, PrimaryMetricGoal
from cluster.sweep.sampling import SAMPLINGS, ParameterSampling

if TYPE_CHECKING:
    SamplingField = ParameterSampling
    PolicyField = EarlyTerminationPolicy
else:
    #: a sampler, or its tagged dict (``{"type": "random", "space": {...}, "seed": 7}``)
    SamplingField = SAMPLINGS.field()
    #: a policy, or its tagged dict (``{"type": "bandit", "slack_factor": 0.1, ...}``)
    PolicyField = POLICIES.field()

__all__ = ["MAX_TOTAL_RUNS", "SPEC_VERSION", "SweepSpec", "argument_name"]

MAX_TOTAL_RUNS = 1000
"""Upper bound of ``max_total_runs`` (HyperDrive's limit too)."""

SPEC_VERSION = 1


def argument_name(name: str) -> str:
    """The command-line flag a hyperparameter is passed as: the name itself, or ``--name`` if it has no dash."""
    return name if name.startswith("-") else f"--{name}"


@record
class SweepSpec(Record):
    """Everything the controller needs to drive a sweep: stored once as ``<parent prefix>sweep.json``.

    A typed record (cluster/schema.py): the sampler, the policy and the run configuration are rebuilt and
    checked when the spec is read, so a damaged ``sweep.json`` is a :class:`~cluster.errors.PayloadError` at once.
    """

    __what__ = "sweep spec"

    sampling: SamplingField
    policy: PolicyField
    primary_metric_name: str
    primary_metric_goal: PrimaryMetricGoal
    max_total_runs: Annotated[WholeNumber, Field(ge=1, le=MAX_TOTAL_RUNS)]
    max_concurrent_runs: Annotated[WholeNumber, Field(ge=1)]
    max_duration_minutes: PositiveNumber
    goal_threshold: Number | None
    run_config: RunConfiguration
    snapshot: str = ""
    experiment: str = ""
    parent_id: str = ""
    created: Number = 0.0  # epoch seconds: the start of max_duration_minutes
    version: WholeNumber = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def goal(self) -> PrimaryMetricGoal:
        return self.primary_metric_goal

    @property
    def deadline(self) -> float:
        return self.created + self.max_duration_minutes * 60.0

    @classmethod
    def from_dict(cls, data: Any) -> SweepSpec:
        """A stored spec; its version must be this one's. Raises :class:`~cluster.errors.PayloadError`."""
        if isinstance(data, Mapping) and data.get("version", SPEC_VERSION) != SPEC_VERSION:
            raise PayloadError(f"sweep spec version {data.get('version')!r} is not supported (expected {SPEC_VERSION})",
                               hint="the sweep was submitted by a different version of the cluster")
        return load(cls, data, error=PayloadError)
