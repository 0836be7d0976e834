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
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import torch

R = TypeVar("R")

FORWARD_DEADLINE_S = 600.0
"""The longest one policy forward may take before the rollout gives up (a hung thread)."""

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _single_threaded() -> None:
    """The forward thread's start: torch gives a thread the process default count on its first
    use (per-thread lazy initialisation), so take it first, then set this thread's to 1."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _executor_of_this_process() -> ThreadPoolExecutor:
    """The one forward thread of this process, started on first use. ``set_num_threads(1)``
    on it also sets torch's process default that threads not yet initialised adopt; the
    caller's own count is initialised first and the default is set back to it once the forward
    thread has started, so no other thread's count changes."""
    global _executor
    with _lock:
        if _executor is None:
            caller = torch.get_num_threads()
            executor = ThreadPoolExecutor(
                1, thread_name_prefix="maml-rl-forward", initializer=_single_threaded
            )
            executor.submit(int).result(timeout=FORWARD_DEADLINE_S)  # the start has run
            torch.set_num_threads(caller)  # the same count: only the default is restored
            _executor = executor
        return _executor


def _forget_after_fork() -> None:
    """A forked child has no copy of the parent's threads: it starts its own on first use."""
    global _executor, _lock
    _executor, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _without_grad(fn: Callable[..., R], *args: Any) -> R:
    with torch.no_grad():  # grad mode is per thread too
        return fn(*args)


def on_forward_thread(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` run on the process's single-threaded forward thread, without autograd: each call
    waits for its result (at most :data:`FORWARD_DEADLINE_S`) and re-raises its exception."""
    executor = _executor_of_this_process()

    def call(*args: Any) -> R:
        future = executor.submit(_without_grad, fn, *args)
        try:
            return future.result(timeout=FORWARD_DEADLINE_S)
        except FutureTimeout:
            raise TimeoutError(
                f"a policy forward took over {FORWARD_DEADLINE_S:.0f} s on the sampler's "
                "forward thread; giving up on this rollout"
            ) from None

    return call


__all__ = ["FORWARD_DEADLINE_S", "on_forward_thread"]
