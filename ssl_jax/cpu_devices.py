"""XLA settings for CPU hosts, applied before JAX starts (import and call this first).

- Convolutions on XLA:CPU's Eigen path, not YNNPACK: jaxlib 0.10's default
  sends every convolution to a YNNPACK fusion that runs on ONE thread (measured:
  a 3x3 conv forward+backward at 128x32x32x64, 1 device on 2 cores, 52.9
  GFLOP/s at 1.06 CPU-seconds per second; Eigen 107.7 GFLOP/s at 1.90).
  ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` removes
  only the convolutions from YNNPACK's list. SimCLR's full-width ResNet-18 step
  (batch 256, 2 devices) went from 34% to 59% MFU (benchmarks/train_step.py).
- One simulated XLA device per core: data parallelism over per-core devices
  keeps every core busy in the ops that run on one thread.
- An abort timeout of 5 minutes (XLA's default: 40 s) for a device that
  reaches an in-process collective late. Two things look alike here: a device
  thread that is merely slow (a busy or oversubscribed host: a CIFAR-10 run
  with a test suite next to it was aborted at step 209 by the 40-s default),
  and a real hang (seen once in a 2-device CPU run: one device never reached an
  all-reduce; 0% CPU). 5 minutes tolerates the first and still ends the second
  with an error, so a supervisor can rerun the job, which resumes from its last
  checkpoint. A 1-device run (``--xla_force_host_platform_device_count=1``)
  has no collectives at all.
- With more than one device, a PJRT client thread pool of at least 2 threads per
  device (``PJRT_NPROC``). The pool (default: one thread per core) both
  launches each device's share of a multi-device program and runs it, and a
  launch waits while its device has 32 programs in flight
  (``max_inflight_computations_per_device``). Once Python dispatches ~32 steps
  ahead, one thread can run device 0's step k (blocked in its all-reduce,
  waiting for device 1) while the other waits to launch device 1's step k+32
  -- and device 1's step k, queued behind them, never gets a thread. That is
  the rare 2-device hang seen four times here (native stacks: one pool thread
  in an all-reduce rendezvous, one in a launch's semaphore). A 2-device script
  dispatching 2,000 small all-reduce programs hangs every time with the default
  pool of 2 and never with 4 (``tests/test_launch.py``). A 1-device run has no
  collectives and keeps the default. The pool's size also splits XLA:CPU's
  parallel ops, so it moves float results in the last bits: a run is
  reproducible bit for bit only at the same ``PJRT_NPROC`` (the test suite pins
  8 for its 8 devices).

Explicit settings in ``XLA_FLAGS`` and ``PJRT_NPROC`` win. No effect on GPU and TPU devices.
"""

from __future__ import annotations

import importlib.metadata
import os
import re

# Convolutions leave YNNPACK's list (its convolutions run on one thread).
YNN_FUSION_TYPES = "-individual_convolution"
YNN_MIN_JAXLIB = (0, 10)  # the jaxlib measured (and pinned) with this flag
COLLECTIVE_ABORT_SECONDS = 300
COLLECTIVE_WARN_SECONDS = 120


def _jaxlib_version() -> tuple[int, ...]:
  """The installed jaxlib's (major, minor), read without importing JAX; (0,) if unknown."""
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return (0,)
  return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def configure(device_count: int | None = None) -> None:
  """Adds the CPU device count, the convolution path and the collective timeouts to
  ``XLA_FLAGS``, and (with several devices) sizes the PJRT thread pool
  (``PJRT_NPROC``); each only if not set.

  Args:
    device_count: simulated CPU devices (default: one per core).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  explicit = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags)
  count = int(explicit.group(1)) if explicit else (device_count or os.cpu_count() or 1)
  wanted = {
      "xla_force_host_platform_device_count": count,
      "xla_cpu_collective_call_terminate_timeout_seconds": COLLECTIVE_ABORT_SECONDS,
      "xla_cpu_collective_call_warn_stuck_timeout_seconds": COLLECTIVE_WARN_SECONDS,
  }
  if _jaxlib_version() >= YNN_MIN_JAXLIB:  # XLA aborts on a flag it does not know.
    wanted["xla_cpu_experimental_ynn_fusion_type"] = YNN_FUSION_TYPES
  for name, value in wanted.items():
    if name not in flags:
      flags += f" --{name}={value}"
  os.environ["XLA_FLAGS"] = flags.strip()
  if count > 1:  # no thread starvation of multi-device launches (module docstring)
    os.environ.setdefault("PJRT_NPROC", str(max(2 * count, os.cpu_count() or 1)))
