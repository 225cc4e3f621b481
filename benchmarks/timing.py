"""Interleaved timing rounds: every contender runs a round, then every contender runs the next.

Machine load drifts by tens of percent over a minute here, so contenders are never timed one
after another in long blocks: round r of each runs back to back, and the order rotates between
rounds so no one always goes first. Each round is a fixed number of steps with no sleeps (waking
an idle core costs milliseconds, PERF_NOTES lesson 3), preceded by one untimed step that wakes
the contender's thread pool after another contender's pool had the cores.
"""
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def noop():
    pass


@dataclass
class Contender:
    """One thing being timed: ``step(i)`` does one unit of work (``i`` picks the batch)."""

    name: str
    step: Callable[[int], None]
    enter: Callable[[], None] = noop  # thread-pool settings this contender runs under
    sync: Callable[[], None] = noop   # waits for queued device work before a clock is read
    steps: int = 1                     # steps per round, fixed by calibrate()
    times: list = field(default_factory=list)  # seconds per round


def timed(contender, steps, start=0):
    """Seconds for ``steps`` consecutive steps of ``contender`` (clock read after ``sync``)."""
    contender.sync()
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        contender.step(i)
    contender.sync()
    return time.perf_counter() - t0


def calibrate(contender, target_s, warmup=3, min_steps=2, max_steps=2000):
    """Warm ``contender`` up and fix its steps per round so a round lasts about ``target_s``."""
    contender.enter()
    for i in range(warmup):
        contender.step(i)
    per_step = statistics.median(timed(contender, 1, i) for i in range(3))
    contender.steps = max(min_steps, min(max_steps, math.ceil(target_s / max(per_step, 1e-9))))
    return contender.steps


def interleave(contenders, rounds):
    """Run ``rounds`` rounds of every contender, rotating the order; fills each ``times``."""
    for r in range(rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            c.enter()
            c.step(0)  # untimed: wake this contender's pool
            c.times.append(timed(c, c.steps, start=r * c.steps))
    return contenders


def paired(groups, baseline, rounds):
    """Interleave each group of contenders with the ``baseline`` group alone.

    groups: {name: [contender, ...]}; baseline: [contender, ...]. Returns {name: [each baseline
    contender's times in that pairing]}; each group's contenders keep their own in ``times``.

    Why pairs rather than one interleave of everyone: a third contender between two leaves its
    own thread pool behind. After a numpy-backend round, OpenBLAS's two workers kept spinning
    into the next contender's round (lenet inference here: numba/torch 1.33x with the numpy
    backend in the rotation, 2.02x without it, minutes apart). So every ratio compares rounds
    that ran back to back with nothing else between them.
    """
    base_times = {}
    for name, group in groups.items():
        for b in baseline:
            b.times = []
        interleave(group + baseline, rounds)
        base_times[name] = [b.times for b in baseline]
    return base_times


def summary(times, items_per_round):
    """min/median/max throughput (items per second) and median seconds per item of a contender."""
    rates = sorted(items_per_round / t for t in times)
    return {
        "rounds": len(times),
        "items_per_round": items_per_round,
        "round_seconds": list(times),
        "min": rates[0],
        "median": statistics.median(rates),
        "max": rates[-1],
        "median_seconds_per_item": statistics.median(times) / items_per_round,
    }
