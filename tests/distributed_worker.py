"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: train the runs a JSON spec lists and
record, after every optimisation step, the largest difference between the processes' weights (and EMA weights).

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py spec.json

spec: {"runs": [{"name", "out", "resume", "config": ModelConfig as JSON}], "report": path}. The main process
writes {name: {"gaps": [...one per step...], "world": processes, "start_step": first step}} to ``report``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from diffusionlab.config import ModelConfig
from diffusionlab.training import Trainer


def flat_weights(trainer: Trainer) -> Tensor:
    """Every parameter of the trained network and of its EMA copy, as one vector."""
    net = trainer.accelerator.unwrap_model(trainer.model)
    return torch.cat([p.detach().flatten() for m in (net, trainer.pipeline.ema) for p in m.parameters()])


def train_checked(spec: dict) -> dict:
    """Train one run of the spec, gathering every process's weights after each step."""
    config = ModelConfig.model_validate(spec["config"])
    trainer = Trainer(config, spec["out"], resume=spec["resume"], progress=False, cpu=True, track=False)
    gaps: list[float] = []
    step_once = trainer.train_step

    def checked_step(step: int) -> tuple[float, float]:
        result = step_once(step)
        weights = trainer.accelerator.gather(flat_weights(trainer)[None])  # (processes, parameters)
        gaps.append(float((weights - weights[0]).abs().max()))
        return result

    trainer.train_step = checked_step  # type: ignore[method-assign]
    start = trainer.start_step
    trainer.train()
    return {"gaps": gaps, "world": trainer.accelerator.num_processes, "start_step": start}


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    report = {run["name"]: train_checked(run) for run in spec["runs"]}
    if int(torch.distributed.get_rank()) == 0:
        Path(spec["report"]).write_text(json.dumps(report))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
