"""A stall watchdog for the training loop: a wedged run exits, so it can be resumed.

A process can stop making progress without failing: a device thread that never
reaches a collective (seen twice in 2-device CPU runs: one device never joined
an all-reduce), XLA:CPU's intra-op thread pool wedging (reported for jaxlib's
multi-threaded Eigen), a dead filesystem. On a multi-day run that costs the
reservation until someone looks. The training loop calls ``beat()`` once per
step (the host enqueues steps asynchronously, and blocks at the next log
interval's metrics fetch when the device stops); the first beat arms it, so
compiling the first step does not count; phases with no steps (kNN
evaluation, DeepCluster's re-clustering, the final plots) run under
``paused()``. If no beat comes for ``timeout_seconds``, the watchdog logs an
error with every Python thread's stack and ends the process with exit status
``STALL_EXIT_STATUS`` (75, EX_TEMPFAIL: "try again"), after letting a
checkpoint being written finish (for at most a minute). Rerunning the same
command resumes from the last checkpoint (a damaged one is quarantined and its
predecessor used, as after any crash); ``launch/pretrain_local.sh`` reruns by
itself.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time

from absl import logging

STALL_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): a transient failure, rerun.


class StallWatchdog:
  """Ends the process when ``beat()`` is not called for ``timeout_seconds``.

  Use as a context manager around the loop; ``timeout_seconds <= 0`` disables it.
  """

  def __init__(self, timeout_seconds: float, *, poll_seconds: float | None = None,
               on_stall=None):
    """``on_stall(idle_seconds)`` replaces the exit (tests)."""
    self.timeout_seconds = float(timeout_seconds)
    self._on_stall = on_stall
    self._before_exit = None
    self._poll = poll_seconds or max(0.05, min(10.0, self.timeout_seconds / 10))
    self._last = None  # armed by the first beat: compiling the first step is not a stall
    self._paused = 0
    self._warned_slow = False
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None

  def before_exit(self, fn, timeout_seconds: float = 60.0) -> None:
    """Runs ``fn()`` (e.g. finishing a checkpoint being written) before a stall exit,
    for at most ``timeout_seconds`` (it may be wedged too)."""
    self._before_exit = (fn, timeout_seconds)

  def beat(self) -> None:
    """The loop made progress. Warns once when a gap between beats (paused time
    excepted) took over half the timeout: a slow but healthy run close to being ended."""
    now = time.monotonic()
    last, self._last = self._last, now
    if (self.timeout_seconds > 0 and last is not None and not self._warned_slow
        and now - last > self.timeout_seconds / 2):
      self._warned_slow = True
      logging.warning("The training loop went %.0f s without a step, over half of "
                      "config.stall_timeout_minutes=%.4g: raise it (or lower log_every_steps), "
                      "or the stall watchdog may end a slow but healthy run.", now - last,
                      self.timeout_seconds / 60)

  @contextlib.contextmanager
  def paused(self):
    """No beats expected inside (a phase with its own, longer, pace)."""
    with self._lock:
      self._paused += 1
    try:
      yield
    finally:
      with self._lock:
        self._paused -= 1
      if self._last is not None:
        self._last = time.monotonic()  # the clock restarts; paused time is not a gap

  def _watch(self) -> None:
    while not self._stop.wait(self._poll):
      with self._lock:
        paused = self._paused > 0
      last = self._last
      if last is None or paused:
        continue
      idle = time.monotonic() - last
      if idle > self.timeout_seconds:
        (self._on_stall or self._exit)(idle)
        return

  def _exit(self, idle: float) -> None:
    logging.error(
        "No training step finished for %.0f s (config.stall_timeout_minutes=%.4g): the process "
        "looks wedged. Exiting with status %d; rerun the same command to resume from the last "
        "checkpoint. Python stacks follow.", idle, self.timeout_seconds / 60, STALL_EXIT_STATUS)
    logging.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    if self._before_exit is not None:
      fn, timeout = self._before_exit
      finisher = threading.Thread(target=fn, daemon=True)
      finisher.start()
      finisher.join(timeout)
    logging.flush()
    os._exit(STALL_EXIT_STATUS)  # pylint: disable=protected-access

  def __enter__(self):
    if self.timeout_seconds > 0:
      self._thread = threading.Thread(target=self._watch, name="ssl_jax-stall-watchdog",
                                      daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
