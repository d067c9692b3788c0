"""Tests run on CPU with 8 simulated devices; the flags must be set before jax is imported."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("MPLBACKEND", "Agg")
# Most tests build a fresh Trainer (new jitted functions) around the same tiny programs; XLA's persistent
# compilation cache lets each be compiled once per worker instead of once per test (halves the suite on CPU).
# One directory per xdist worker, so no two processes write the same cache.
worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"brainjax-test-xla-cache-{os.getuid()}-{worker}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
