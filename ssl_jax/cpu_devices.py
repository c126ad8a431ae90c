"""XLA settings for CPU hosts, applied before JAX starts (import and call this first).

- One simulated XLA device per core: XLA:CPU runs each convolution on one
  thread, so data parallelism over per-core devices is what uses every core.
- An abort timeout of 5 minutes (XLA's default: 40 s) for a device that
  reaches an in-process collective late. Two things look alike here: a device
  thread that is merely slow (a busy or oversubscribed host: a CIFAR-10 run
  with a test suite next to it was aborted at step 209 by the 40-s default),
  and a real hang (seen once in a 2-device CPU run: one device never reached an
  all-reduce; 0% CPU). 5 minutes tolerates the first and still ends the second
  with an error, so a supervisor can rerun the job, which resumes from its last
  checkpoint. A 1-device run (``--xla_force_host_platform_device_count=1``)
  has no collectives at all.

Explicit settings in ``XLA_FLAGS`` win. No effect on GPU and TPU devices.
"""

from __future__ import annotations

import os

COLLECTIVE_ABORT_SECONDS = 300
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
