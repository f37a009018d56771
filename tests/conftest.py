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
"""Test-session setup: 8 simulated CPU devices for the sharding tests."""

import os

# Must happen before jax initialises its backend; every test then sees 8 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_jax_caches():
  """Drops compiled executables after each test.

  Parameterised tests compile hundreds of distinct programs; each keeps LLVM code mappings
  alive, and one process can exhaust vm.max_map_count (65530) long before memory runs out.
  """
  yield
  import jax
  jax.clear_caches()
