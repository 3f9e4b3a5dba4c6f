"""Heartbeats from pool workers, so that a stalled worker is found in seconds rather than at the per-file timeout.

Shared memory between the parent and the workers of one pool: per worker slot, the task it runs, when it last
finished a decoded block, and its slowest block so far. A worker beats after every block it decodes (predicted
or skipped over); the parent takes a running task whose worker has been silent for
``max(stall_floor_s, stall_factor x the slowest block seen)`` for a hung worker (SIGSTOP, a deadlock) and handles
it as dead. ``time.monotonic`` is one clock for every process of the machine (Linux: CLOCK_MONOTONIC).
"""

from __future__ import annotations

import time
from multiprocessing.context import BaseContext

IDLE = -1


class Heartbeats:
    """The shared arrays of one pool (``slots`` workers); pickled only when the workers are spawned."""

    def __init__(self, ctx: BaseContext, slots: int) -> None:
        self.task = ctx.RawArray("l", [IDLE] * slots)
        self.beat = ctx.RawArray("d", slots)
        self.slowest = ctx.RawArray("d", slots)
        self.next_slot = ctx.Value("i", 0)

    def claim(self) -> int:
        """A worker's slot, once, in its initializer."""
        with self.next_slot.get_lock():
            slot = self.next_slot.value
            self.next_slot.value += 1
        return slot

    def last_beat(self, task: int) -> float | None:
        """When the worker running ``task`` last beat, or None when no worker shows it yet."""
        beats = [self.beat[s] for s in range(len(self.task)) if self.task[s] == task]
        return max(beats) if beats else None

    def slowest_block_s(self) -> float:
        return max(self.slowest[:], default=0.0)


class WorkerBeat:
    """A worker's side: its slot, the task it runs, a beat after every block."""

    def __init__(self, beats: Heartbeats) -> None:
        self.beats = beats
        self.slot = beats.claim()
        self.last = time.monotonic()

    def start(self, task: int) -> None:
        self.last = time.monotonic()
        self.beats.beat[self.slot] = self.last
        self.beats.task[self.slot] = task

    def block(self) -> None:
        now = time.monotonic()
        self.beats.slowest[self.slot] = max(self.beats.slowest[self.slot], now - self.last)
        self.beats.beat[self.slot] = self.last = now

    def done(self) -> None:
        self.beats.task[self.slot] = IDLE
