"""The samplers' rollouts, on one single-threaded thread of their own.

A rollout asks the policy for actions once per time step. That forward is small, and torch's
OpenMP workers spin-waiting between steps steal the cores the batched physics threads need
(measured: sampling 3.3x slower on 2 cores with torch's default threads), so the forwards run
with one torch thread. torch's intra-op thread count belongs to the calling thread (its OpenMP
backend keeps it per thread: a thread that calls ``torch.set_num_threads(1)`` leaves every
other thread's count as it was; ``tests/test_sampler.py`` checks it), so whole rollouts (env
steps and forwards) run on one thread made once per process (:func:`on_rollout_thread`), which
set its own count to 1 when it started. No thread count is changed afterwards, in particular
never the caller's: the learner keeps its threads for the meta-step.

The whole rollout, not each forward, is handed to the thread: a hand-off per time step (a queue
put, two thread wake-ups) cost 16% of an exact half-cheetah sampling call (1.05 against 0.89 s
for 800 episodes of 200 steps on 2 cores). The caller's wait has a deadline on progress: the
rollout ticks :class:`Progress` once per time step, and a step that takes longer than
:data:`STEP_DEADLINE_S` ends the wait. One thread runs the rollouts one after the other, so two
never share an env; a rollout whose caller stopped waiting (deadline, Ctrl-C) is cancelled at
its next step.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import torch

R = TypeVar("R")

STEP_DEADLINE_S = 600.0
"""The longest one rollout step (or the thread's start) may take before the caller gives up."""


class RolloutCancelled(Exception):
    """Raised on the rollout thread at the next step of a rollout whose caller stopped waiting."""


class Progress:
    """A rollout's step counter, ticked by the rollout on the thread, read by the waiting caller;
    :meth:`tick` raises :class:`RolloutCancelled` once the caller has cancelled the rollout."""

    def __init__(self) -> None:
        self.steps = 0
        self.cancelled = False

    def tick(self) -> None:
        if self.cancelled:
            raise RolloutCancelled("the caller stopped waiting for this rollout")
        self.steps += 1


def _single_threaded() -> None:
    """The thread's start: torch gives a thread the process default count on its first use
    (per-thread lazy initialisation), so take it first, then set this thread's to 1."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _without_grad(fn: Callable[..., R], *args: Any) -> R:
    with torch.no_grad():  # grad mode is per thread too
        return fn(*args)


class _RolloutThread:
    """One daemon thread serving calls from a queue: a hung rollout cannot keep the process
    from exiting, and the caller's wait has a deadline."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]]
        self._jobs = queue.SimpleQueue()
        started = threading.Event()
        thread = threading.Thread(
            target=self._serve, args=(started,), name="maml-rl-rollout", daemon=True
        )
        thread.start()
        if not started.wait(STEP_DEADLINE_S):
            raise TimeoutError("the sampler's rollout thread did not start")

    def _serve(self, started: threading.Event) -> None:
        _single_threaded()
        started.set()
        while True:
            fn, args, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(_without_grad(fn, *args))
            except BaseException as err:  # the caller re-raises it
                future.set_exception(err)

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        future: Future[R] = Future()
        self._jobs.put((fn, args, future))
        return future


_lock = threading.Lock()
_thread: _RolloutThread | None = None


def _thread_of_this_process() -> _RolloutThread:
    """The one rollout thread of this process, started on first use. ``set_num_threads(1)``
    on it also sets torch's process default that threads not yet initialised adopt; the
    caller's own count is initialised first and the default is set back to it once the
    thread has started (or failed to), so no other thread's count changes."""
    global _thread
    with _lock:
        if _thread is None:
            caller = torch.get_num_threads()
            try:
                _thread = _RolloutThread()
            finally:
                torch.set_num_threads(caller)  # the same count: only the default is restored
        return _thread


def _forget_after_fork() -> None:
    """A forked child has no copy of the parent's threads: it starts its own on first use."""
    global _thread, _lock
    _thread, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def on_rollout_thread(work: Callable[[Progress], R]) -> R:
    """``work(progress)`` run on the process's single-threaded rollout thread, without
    autograd; returns its result and re-raises its exception. ``work`` calls
    ``progress.tick()`` once per time step: the wait ends with a :class:`TimeoutError` when
    no tick came for :data:`STEP_DEADLINE_S`, and any way the wait ends early (the deadline,
    Ctrl-C) cancels the rollout at its next tick."""
    progress = Progress()
    future = _thread_of_this_process().submit(work, progress)
    seen = progress.steps
    try:
        while True:
            try:
                return future.result(timeout=STEP_DEADLINE_S)
            except FutureTimeout:
                if progress.steps == seen:
                    raise TimeoutError(
                        f"a rollout step took over {STEP_DEADLINE_S:.0f} s on the sampler's "
                        "rollout thread; giving up on this rollout"
                    ) from None
                seen = progress.steps
    except BaseException:
        progress.cancelled = True
        future.cancel()
        raise


__all__ = ["STEP_DEADLINE_S", "Progress", "RolloutCancelled", "on_rollout_thread"]
