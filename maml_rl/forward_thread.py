"""The samplers' per-step policy forwards, on one single-threaded thread of their own.

A rollout asks the policy for actions once per time step. That forward is small, and torch's
OpenMP workers spin-waiting between steps steal the cores the batched physics threads need
(measured: sampling 3.3x slower on 2 cores with torch's default threads), so the forwards run
with one torch thread. torch's intra-op thread count belongs to the calling thread (its OpenMP
backend keeps it per thread: a thread that calls ``torch.set_num_threads(1)`` leaves every
other thread's count as it was; ``tests/test_sampler.py`` checks it), so the forwards run on
one thread made once per process (:func:`on_forward_thread`), which set its own count to 1 when
it started. No thread count is changed afterwards, in particular never the caller's: the
learner keeps its threads for the meta-step.
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

FORWARD_DEADLINE_S = 600.0
"""The longest one policy forward (or the thread's start) may take before the rollout gives up."""


def _single_threaded() -> None:
    """The forward thread's start: torch gives a thread the process default count on its first
    use (per-thread lazy initialisation), so take it first, then set this thread's to 1."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _without_grad(fn: Callable[..., R], *args: Any) -> R:
    with torch.no_grad():  # grad mode is per thread too
        return fn(*args)


class _ForwardThread:
    """One daemon thread serving calls from a queue: a hung forward cannot keep the process
    from exiting, and the caller's wait has a deadline."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]]
        self._jobs = queue.SimpleQueue()
        started = threading.Event()
        thread = threading.Thread(
            target=self._serve, args=(started,), name="maml-rl-forward", daemon=True
        )
        thread.start()
        if not started.wait(FORWARD_DEADLINE_S):
            raise TimeoutError("the sampler's forward thread did not start")

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
_thread: _ForwardThread | None = None


def _thread_of_this_process() -> _ForwardThread:
    """The one forward thread of this process, started on first use. ``set_num_threads(1)``
    on it also sets torch's process default that threads not yet initialised adopt; the
    caller's own count is initialised first and the default is set back to it once the forward
    thread has started (or failed to), so no other thread's count changes."""
    global _thread
    with _lock:
        if _thread is None:
            caller = torch.get_num_threads()
            try:
                _thread = _ForwardThread()
            finally:
                torch.set_num_threads(caller)  # the same count: only the default is restored
        return _thread


def _forget_after_fork() -> None:
    """A forked child has no copy of the parent's threads: it starts its own on first use."""
    global _thread, _lock
    _thread, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def on_forward_thread(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` run on the process's single-threaded forward thread, without autograd: each call
    waits for its result (at most :data:`FORWARD_DEADLINE_S`) and re-raises its exception."""
    thread = _thread_of_this_process()

    def call(*args: Any) -> R:
        future = thread.submit(fn, *args)
        try:
            return future.result(timeout=FORWARD_DEADLINE_S)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(
                f"a policy forward took over {FORWARD_DEADLINE_S:.0f} s on the sampler's "
                "forward thread; giving up on this rollout"
            ) from None

    return call


__all__ = ["FORWARD_DEADLINE_S", "on_forward_thread"]
