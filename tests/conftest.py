# Copyright 2026 The nl_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Test-session setup: 8 simulated CPU devices, and XLA's cheapest compile."""

import os

# Must happen before jax initialises its backend; set in the environment so that the
# subprocesses of the launch and data tests get the same.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # Every test sees 8 CPU devices (the sharding tests).
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite is compile-bound: ~85% of its time is XLA's backend compile of small programs that
# then run for milliseconds. jax_disable_most_optimizations (LLVM at -O0, no expensive LLVM
# passes; the HLO passes still run) halves that compile (tests/models/test_hope.py and
# test_cms_ntp.py: 368 s -> 204 s on one core) and keeps the arithmetic as written (no
# fast-math either way), so no tolerance moves; the programs run ~3x slower, which only the
# few multi-step tests feel. JAX_DISABLE_MOST_OPTIMIZATIONS=0 tests at the level users run.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


import pytest  # noqa: E402


def _memory_map_count() -> int:
  try:
    with open("/proc/self/maps", "rb") as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux: no map count to watch, clear after every test
    return _MAX_MAPS


# vm.max_map_count is 65530 by default; clear well before it.
_MAX_MAPS = 30000


@pytest.fixture(autouse=True)
def _clear_jax_caches():
  """Drops compiled executables once they hold too many memory mappings.

  Parameterised tests compile hundreds of distinct programs; each keeps LLVM code mappings
  alive, and one process can exhaust vm.max_map_count (65530) long before memory runs out.
  Clearing after every test instead recompiles the same small eager ops (the same shapes
  and dtypes) in every test: thousands of compiles in the memory tests alone.
  """
  yield
  if _memory_map_count() >= _MAX_MAPS:
    import jax
    jax.clear_caches()
