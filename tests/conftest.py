"""Every test sees 8 simulated CPU devices (set before jax is imported)."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's default PJRT pool for 8 devices (max(cores, devices) = 8 threads), not the
# 2-per-device pool cpu_devices sets against the run-ahead hang: the pool's size also
# splits XLA:CPU's parallel ops, so it moves float results, and the suite's losses and
# time are budgeted with 8. The tests' loops are short (the hang needs ~32 steps in flight).
# Only for this process: the tests' own 2-device subprocesses must not inherit 8 threads
# for 2 devices, so the variable goes once the backend is up (unless the caller set it).
_SUITE_SETS_POOL = "PJRT_NPROC" not in os.environ
os.environ.setdefault("PJRT_NPROC", "8")
from ssl_jax import cpu_devices  # noqa: E402  (collective timeouts; before jax)

cpu_devices.configure()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the session, shared by both xdist
# workers and by every subprocess a test starts (they inherit the environment):
# the suite's time is mostly XLA compiling, and tests compile the same programs
# (a run and its resume, a CLI run and an in-process run of one config).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="ssl_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# TFDS must never try the network in tests.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
if _SUITE_SETS_POOL:
  jax.devices()  # the pool is fixed once the backend is up
  del os.environ["PJRT_NPROC"]


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, f"expected 8 simulated devices, got {len(devs)}"
  return devs


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data_dir for the session; the offline digits dataset is built into it on first use."""
  return str(tmp_path_factory.mktemp("tfds"))
