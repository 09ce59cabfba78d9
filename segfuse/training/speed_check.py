"""Warn early when a run's measured speed leaves too few iterations to learn much.

``segfuse train`` times its own first iterations (after one warm-up iteration,
:data:`CHECK_ITERATIONS` more or :data:`CHECK_SECONDS` of them, whichever comes
first) and projects how many optimiser steps the run will get: the
``training.iterations`` cap, or what fits in ``training.max_minutes`` at that
speed. Fewer than :data:`MIN_USEFUL_ITERATIONS` gets a warning that names the
keys to change (and ``segfuse plan``, which measures and chooses them).

Example:
    >>> cfg = load_config("configs/debug.yaml", ["training.max_minutes=2"])  # doctest: +SKIP
    >>> speed_warning(cfg, seconds_per_iteration=21.7, done=2, used_seconds=43.0)  # doctest: +SKIP
    'at 21.7 s per iteration, training.max_minutes=2 fits about 5 iterations ...'
"""

from __future__ import annotations

import logging

from segfuse.config import Config

__all__ = ["MIN_USEFUL_ITERATIONS", "SpeedCheck", "speed_warning"]

log = logging.getLogger("segfuse.train")

MIN_USEFUL_ITERATIONS = 300
CHECK_ITERATIONS = 3
CHECK_SECONDS = 20.0

_CHEAPER = (
    "model.mode: 2d with model.context_slices: 1 (2.5D slices), a smaller training.patch_size or "
    "training.batch_size, model.widen_factor (3D) or model.encoder_depth"
)


def projected_iterations(cfg: Config, seconds_per_iteration: float, done: int, used_seconds: float) -> int:
    """Optimiser steps the run will make: the iteration cap or what fits in the time budget, whichever is fewer."""
    total = cfg.training.iterations
    if cfg.training.max_minutes:
        left = max(0.0, cfg.training.max_minutes * 60 - used_seconds)
        total = min(total, done + int(left / max(seconds_per_iteration, 1e-9)))
    return total


def speed_warning(cfg: Config, seconds_per_iteration: float, done: int, used_seconds: float) -> str | None:
    """The warning for a run at ``seconds_per_iteration``, or ``None`` when it gets enough iterations.

    Args:
        cfg: the run config.
        seconds_per_iteration: measured optimisation seconds per iteration.
        done: iterations already made; ``used_seconds``: optimisation seconds spent so far.
    """
    total = projected_iterations(cfg, seconds_per_iteration, done, used_seconds)
    if total >= MIN_USEFUL_ITERATIONS:
        return None
    t = cfg.training
    speed = f"{seconds_per_iteration:.3g} s per iteration"
    if t.max_minutes and total < t.iterations:
        return (
            f"at {speed} (measured on the first iterations), training.max_minutes={t.max_minutes:g} fits about "
            f"{total:,} iterations, fewer than the {MIN_USEFUL_ITERATIONS} a model needs to learn much. Make each "
            f"iteration cheaper ({_CHEAPER}) or raise training.max_minutes; `segfuse plan --minutes "
            f"{t.max_minutes:g}` measures this machine and chooses them"
        )
    return (
        f"training.iterations={t.iterations:,} allows only {total:,} optimiser steps, fewer than the "
        f"{MIN_USEFUL_ITERATIONS} a model needs to learn much (at {speed} here); raise training.iterations"
        + (" and training.max_minutes" if t.max_minutes else "")
    )


class SpeedCheck:
    """Called once per iteration by the training loop; logs the speed projection once.

    ``check(iteration, train_seconds)`` after each optimiser step: the first call
    is the warm-up; once :data:`CHECK_ITERATIONS` more iterations or
    :data:`CHECK_SECONDS` have passed it logs the projection (a warning from
    :func:`speed_warning`, else an info line) and does nothing afterwards.
    """

    def __init__(self, cfg: Config, enabled: bool = True) -> None:
        self.cfg = cfg
        self.done = not enabled
        self.start: tuple[int, float] | None = None

    def __call__(self, iteration: int, train_seconds: float) -> str | None:
        if self.done:
            return None
        if self.start is None:  # the first iteration of this process: warm-up, not timed
            self.start = (iteration, train_seconds)
            return None
        steps, seconds = iteration - self.start[0], train_seconds - self.start[1]
        if steps < CHECK_ITERATIONS and seconds < CHECK_SECONDS:
            return None
        self.done = True
        per_iteration = seconds / steps
        message = speed_warning(self.cfg, per_iteration, iteration, train_seconds)
        if message:
            log.warning(message)
        else:
            total = projected_iterations(self.cfg, per_iteration, iteration, train_seconds)
            log.info("speed: %.3g s per iteration; this run will make about %d iterations", per_iteration, total)
        return message
