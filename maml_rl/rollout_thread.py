"""The samplers' rollouts, on one single-threaded thread of their own.

A rollout asks the policy for actions once per time step. That forward is small, and torch's
OpenMP workers spin-waiting between steps steal the cores the batched physics threads need
(half-cheetah sampling was 6.6x slower on 2 cores with torch's default threads;
docs/performance.md), so the forwards run
with one torch thread. torch's intra-op thread count belongs to the calling thread (its OpenMP
backend keeps it per thread: a thread that calls ``torch.set_num_threads(1)`` leaves every
other thread's count as it was; ``tests/test_sampler.py`` checks it), so whole rollouts (env
steps and forwards) run on one thread made once per process (:func:`on_rollout_thread`), which
set its own count to 1 when it started. No thread count is changed afterwards, in particular
never the caller's: the learner keeps its threads for the meta-step.

The whole rollout, not each forward, is handed to the thread: a hand-off per time step (a queue
put, two thread wake-ups) cost 16% of an exact half-cheetah sampling call (1.05 against 0.89 s
for 800 episodes of 200 steps on 2 cores). The caller's wait has a deadline on progress: the
rollout ticks :class:`Progress` once per time step, and when no step has ended for
:data:`STEP_DEADLINE_S` (counted from the rollout's submission, its start and each tick) the
wait ends with a ``TimeoutError``. One thread runs the rollouts one after the other, so two
never share an env. A rollout whose caller stopped waiting is cancelled at its next step; when
the caller was interrupted (Ctrl-C, SIGTERM) it first waits up to :data:`CANCEL_GRACE_S` for
the rollout to stop, so that the env is no longer stepped when the caller goes on to close it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import torch

R = TypeVar("R")

STEP_DEADLINE_S = 600.0
"""The longest one rollout step (or the thread's start) may take before the caller gives up."""

CANCEL_GRACE_S = 10.0
"""How long an interrupted caller waits for its rollout to stop at its next step."""


class RolloutCancelled(Exception):
    """Raised on the rollout thread at the next step of a rollout whose caller stopped waiting."""


class Progress:
    """A rollout's step counter, ticked by the rollout on the thread, read by the waiting caller;
    :meth:`tick` raises :class:`RolloutCancelled` once the caller has cancelled the rollout."""

    def __init__(self) -> None:
        self.started = False
        self.cancelled = False
        self.last = time.monotonic()  # of the submission, the start, the latest tick

    def start(self) -> None:
        self.started, self.last = True, time.monotonic()

    def tick(self) -> None:
        if self.cancelled:
            raise RolloutCancelled("the caller stopped waiting for this rollout")
        self.last = time.monotonic()


def _single_threaded() -> None:
    """The thread's start: torch gives a thread the process default count on its first use
    (per-thread lazy initialisation), so take it first, then set this thread's to 1."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _without_grad(work: Callable[[Progress], R], progress: Progress) -> R:
    with torch.no_grad():  # grad mode is per thread too
        return work(progress)


class _RolloutThread:
    """One daemon thread serving calls from a queue: a hung rollout cannot keep the process
    from exiting, and the caller's wait has a deadline."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[Progress], Any], Progress, Future[Any]]]
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
            fn, progress, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            progress.start()
            try:
                future.set_result(_without_grad(fn, progress))
            except BaseException as err:  # the caller re-raises it
                future.set_exception(err)

    def submit(self, work: Callable[[Progress], R], progress: Progress) -> Future[R]:
        future: Future[R] = Future()
        self._jobs.put((work, progress, future))
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
    ``progress.tick()`` once per time step: the wait ends with a :class:`TimeoutError` when no
    step ended for :data:`STEP_DEADLINE_S`, and any way the wait ends early cancels the rollout
    at its next tick (after an interruption, waiting up to :data:`CANCEL_GRACE_S` for it)."""
    progress = Progress()
    future: Future[R] | None = None
    try:
        future = _thread_of_this_process().submit(work, progress)
        while True:
            left = progress.last + STEP_DEADLINE_S - time.monotonic()
            try:
                return future.result(timeout=max(left, 0.0))
            except FutureTimeout:  # (the builtin TimeoutError, which the work may raise too)
                if future.done():
                    return future.result()  # the work's own result or exception
                if time.monotonic() - progress.last >= STEP_DEADLINE_S:
                    raise _timed_out(progress) from None
    except TimeoutError:
        progress.cancelled = True
        if future is not None:
            future.cancel()
        raise
    except BaseException:
        progress.cancelled = True
        if future is not None and not future.cancel():
            _wait_for_the_stop(future)
        raise


def _timed_out(progress: Progress) -> TimeoutError:
    if not progress.started:
        return TimeoutError(
            f"the sampler's rollout thread was still busy with an earlier rollout after "
            f"{STEP_DEADLINE_S:.0f} s (one that timed out); giving up on this rollout"
        )
    return TimeoutError(
        f"a rollout step took over {STEP_DEADLINE_S:.0f} s on the sampler's rollout thread; "
        "giving up on this rollout"
    )


def _wait_for_the_stop(future: Future[Any]) -> None:
    """Wait up to :data:`CANCEL_GRACE_S` for a cancelled rollout to end (at its next step); a
    second KeyboardInterrupt meanwhile ends the wait (``maml-rl train`` defers later signals
    during its stop, so there the wait runs to the stop or the bound)."""
    try:
        future.exception(timeout=CANCEL_GRACE_S)
    except (FutureTimeout, KeyboardInterrupt):
        pass


__all__ = ["CANCEL_GRACE_S", "STEP_DEADLINE_S", "Progress", "RolloutCancelled", "on_rollout_thread"]
