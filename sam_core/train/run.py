"""What every training script of the bundled models shares: its command-line options, the learning-rate
schedule, and saving and resuming a run (weights and optimizer state written atomically).

A run saves the weights to ``OUT`` (as the model's ``state_dict``, or under ``key`` such as ``"model"`` for
the official SAM 2.1 layout) and the optimizer with its step to ``OUT.state``; ``--resume`` continues from
both.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional

import torch

from sam_core.fileio import atomic_write

__all__ = ["add_run_args", "balance_at", "check_run_args", "last_step", "learning_rate", "resume_run", "save_run",
           "stage_learning_rate", "state_path_for"]


def add_run_args(parser: argparse.ArgumentParser, *, out: str, steps: int, lr: float, warmup: int, seed: int,
                 save_every: int, threads: int = 1) -> None:
    """The options every training script takes (``--out``, ``--steps``, ``--stop-after``, ``--lr``,
    ``--warmup``, ``--seed``, ``--save-every``, ``--log-every``, ``--threads``, ``--device``, ``--workers``,
    ``--state``, ``--resume``, ``--init``), with the script's defaults."""
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--steps", type=int, default=steps, help="length of the learning-rate schedule")
    parser.add_argument("--stop-after", type=int, default=None, help="end the run at this step of the schedule")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--save-every", type=int, default=save_every)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch threads (for small networks 1: on a loaded machine more threads spin on each "
                             "other and a step takes many times longer)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing the data ahead of the training")
    parser.add_argument("--state", type=Path, default=None, help="optimizer state for --resume (default OUT.state)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT and its state file")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from the weights of this file (a finished run, or the shipped model) with a fresh "
                             "optimizer and schedule: how a longer recipe continues the default one")


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace, total: Optional[int] = None,
                   what: str = "--steps") -> None:
    """Refuse a ``--stop-after`` outside the run (``total`` steps, default ``--steps``, named ``what`` in
    the message) and an ``--init`` file that does not exist, and set the torch threads."""
    total = args.steps if total is None else total
    if args.stop_after is not None and not 0 < args.stop_after <= total:
        parser.error(f"--stop-after must be between 1 and {what} ({total})")
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init}: no such file; give the weights of a finished run or a shipped model")
    torch.set_num_threads(args.threads)


def learning_rate(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 2% of ``base`` at ``steps``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def stage_learning_rate(step: int, first_steps: int, first_lr: float, steps: int, lr: float, warmup: int) -> float:
    """The learning rate of a run in two stages, each with its own :func:`learning_rate` schedule:
    ``first_steps`` steps peaking at ``first_lr``, then ``steps`` steps peaking at ``lr``."""
    if step < first_steps:
        return learning_rate(step, first_steps, first_lr, warmup)
    return learning_rate(step - first_steps, steps, lr, warmup)


def balance_at(step: int, fade_steps: float, continuing: bool = False) -> float:
    """The class balance of the mask cross-entropy at ``step`` (``balanced_bce_dice_loss``): 1 at the
    start, fading linearly to 0 at ``fade_steps``; 0 throughout when the run ``continuing`` starts from
    trained weights (``--init``)."""
    if continuing or fade_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - step / fade_steps)


def last_step(total: int, stop_after: Optional[int], what: str = "steps") -> int:
    """Where a run of ``total`` steps ends: ``stop_after`` when given (checked to lie in 1..``total``,
    ``what`` naming the total in the error), else ``total``."""
    last = total if stop_after is None else stop_after
    if not 0 < last <= total:
        raise ValueError(f"stop_after must be between 1 and {what} ({total}), not {stop_after}")
    return last


def state_path_for(out: Path, state_path: Optional[Path] = None) -> Path:
    """Where the optimizer state of a run writing ``out`` lives (default ``OUT.state``)."""
    return state_path or out.with_name(out.name + ".state")


def save_run(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, out: Path, state_path: Path,
             key: Optional[str] = None) -> None:
    """Write the weights (under ``key`` when given) and the optimizer state at ``step``, each atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_write(out) as handle:
        torch.save(state if key is None else {key: state}, handle)
    with atomic_write(state_path) as handle:
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, handle)


def resume_run(model: torch.nn.Module, optimizer: torch.optim.Optimizer, out: Path, state_path: Path,
               device: str, key: Optional[str] = None) -> int:
    """Load the weights and optimizer of an earlier run into ``model`` and ``optimizer``; returns its step
    (0 when ``out`` or its state file is missing)."""
    if not (out.is_file() and state_path.is_file()):
        return 0
    weights = torch.load(out, map_location=device, weights_only=True)
    model.load_state_dict(weights if key is None else weights[key])
    state = torch.load(state_path, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    print(f"resumed at step {int(state['step'])}", flush=True)
    return int(state["step"])
