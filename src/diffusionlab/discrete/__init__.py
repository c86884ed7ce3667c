"""The discrete family: corruption processes over tokens in continuous time (absorbing/masking, uniform), their
NELBOs, and the samplers that reverse them (issue 15).

``processes`` is floor 1 and exported here; ``losses`` (``nelbo``, ``discrete_time_nelbo``, ``bits_per_token``) and
``sampling`` (``sample_tokens``) are floor 3: import them from their modules, so that floor-1 code importing the
processes does not load them.
"""

from .processes import (
    PROCESSES,
    SCHEDULES,
    AbsorbingProcess,
    CosineSchedule,
    DiscreteProcess,
    DiscreteSchedule,
    LogLinearSchedule,
    UniformProcess,
    make_process,
    make_schedule,
)

__all__ = [
    "PROCESSES",
    "SCHEDULES",
    "AbsorbingProcess",
    "CosineSchedule",
    "DiscreteProcess",
    "DiscreteSchedule",
    "LogLinearSchedule",
    "UniformProcess",
    "make_process",
    "make_schedule",
]
