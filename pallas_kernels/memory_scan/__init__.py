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
"""Chunk-parallel matrix-memory scan: XLA reference, Mosaic TPU and Triton GPU kernels.

``memory_scan`` (api.py) is the entry point; ``reference.py`` is the executable spec; the
kernels are ``tpu.scan_core`` and ``gpu.scan_core`` (imported lazily by the api).
"""

from pallas_kernels.memory_scan.api import MemoryScanOutput, memory_scan
from pallas_kernels.memory_scan.config import MemoryScanConfig

__all__ = ["MemoryScanConfig", "MemoryScanOutput", "memory_scan"]
