"""XLA settings for CPU hosts, applied before JAX starts (import and call this first).

- One simulated XLA device per core: XLA:CPU runs each convolution on one
  thread, so data parallelism over per-core devices is what uses every core.
- A long abort timeout for XLA:CPU's in-process collectives. By default XLA
  aborts the whole process when one device's thread reaches an all-reduce 40 s
  after another: on a busy or oversubscribed host (other jobs, a test run next
  to training) a starved thread can be that late, and a multi-hour run died of
  it here (step 209 of a CIFAR-10 run, 2 devices on 2 busy cores). A real
  deadlock is still reported, after ``COLLECTIVE_ABORT_SECONDS``.

Explicit settings in ``XLA_FLAGS`` win. No effect on GPU and TPU devices.
"""

from __future__ import annotations

import os

COLLECTIVE_ABORT_SECONDS = 1800
COLLECTIVE_WARN_SECONDS = 120


def configure(device_count: int | None = None) -> None:
  """Adds the CPU device count and collective timeouts to ``XLA_FLAGS`` (if not set).

  Args:
    device_count: simulated CPU devices (default: one per core).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  wanted = {
      "xla_force_host_platform_device_count": device_count or os.cpu_count() or 1,
      "xla_cpu_collective_call_terminate_timeout_seconds": COLLECTIVE_ABORT_SECONDS,
      "xla_cpu_collective_call_warn_stuck_timeout_seconds": COLLECTIVE_WARN_SECONDS,
  }
  for name, value in wanted.items():
    if name not in flags:
      flags += f" --{name}={value}"
  os.environ["XLA_FLAGS"] = flags.strip()
