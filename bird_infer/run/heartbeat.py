"""Heartbeats from pool workers, so that a stalled worker is found in seconds rather than at the per-file timeout.

Shared memory between the parent and the workers of one pool: per worker slot, its pid, when it finished its
start-up, the task it runs, when it last beat, and its slowest block so far. A worker claims its slot first thing
in its initializer (a beat at its spawn), beats when its start-up is over, after every block it decodes (predicted
or skipped over), and when it goes idle. The parent (:mod:`bird_infer.run.pool`) reads them three ways:

- a running task whose worker has been silent for ``max(stall_floor_s, stall_factor x the slowest block seen)``:
  a hung worker (SIGSTOP, a deadlock), handled as dead;
- a task no worker has taken for that long while a started worker sits idle for as long: the pool's queue is held
  by a worker that stalled while idle (a worker waiting for work holds the queue's lock), so the pool is replaced
  and its tasks handed out again, nobody charged;
- a worker whose start-up has not ended that long after another's did: named in the log; the others take its
  files, and the run ends it with the rest at the end.

``time.monotonic`` is one clock for every process of the machine (Linux: CLOCK_MONOTONIC).
"""

from __future__ import annotations

import os
import time
from multiprocessing.context import BaseContext

IDLE = -1


class Heartbeats:
    """The shared arrays of one pool (``slots`` workers); pickled only when the workers are spawned."""

    def __init__(self, ctx: BaseContext, slots: int) -> None:
        self.spawned = time.monotonic()
        """When the pool was asked for (silence of a worker that never starts counts from here)."""
        self.task = ctx.RawArray("l", [IDLE] * slots)
        self.beat = ctx.RawArray("d", slots)
        self.ready = ctx.RawArray("d", slots)
        """When each slot's worker finished its start-up (0: not yet)."""
        self.pid = ctx.RawArray("l", slots)
        self.claimed_at = ctx.RawArray("d", slots)
        self.slowest = ctx.RawArray("d", slots)
        self.next_slot = ctx.Value("i", 0)

    def claim(self) -> int:
        """A worker's slot, once, first thing in its initializer."""
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

    def claimed(self) -> int:
        """Slots claimed so far (workers that began their start-up)."""
        return min(int(self.next_slot.value), len(self.task))

    def idle_since(self) -> list[float]:
        """For each started worker that runs no task: since when it has been idle (its start-up's end, or its last
        task's)."""
        return [self.beat[s] for s in range(self.claimed()) if self.ready[s] > 0 and self.task[s] == IDLE]

    def starting(self) -> list[tuple[int, float]]:
        """(pid, seconds since it was claimed or the pool spawned) of each worker whose start-up has not ended;
        a slot never claimed shows pid 0."""
        now = time.monotonic()
        out = [(int(self.pid[s]), now - self.claimed_at[s]) for s in range(self.claimed()) if self.ready[s] == 0]
        out += [(0, now - self.spawned)] * (len(self.task) - self.claimed())
        return out

    def startup_s(self) -> float | None:
        """The slowest start-up among the workers that finished theirs (None: none has yet)."""
        times = [self.ready[s] - self.claimed_at[s] for s in range(self.claimed()) if self.ready[s] > 0]
        return max(times) if times else None


class WorkerBeat:
    """A worker's side: its slot, claimed at its spawn; the task it runs, a beat after every block."""

    def __init__(self, beats: Heartbeats) -> None:
        self.beats = beats
        self.slot = beats.claim()
        self.last = time.monotonic()
        beats.pid[self.slot] = os.getpid()
        beats.beat[self.slot] = beats.claimed_at[self.slot] = self.last

    def ready(self) -> None:
        """Start-up over (models built, or failed to build): idle from now."""
        self.last = time.monotonic()
        self.beats.beat[self.slot] = self.last
        self.beats.ready[self.slot] = self.last

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
        self.beats.beat[self.slot] = self.last = time.monotonic()
