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
"""Block sizes and execution options of the Newton-Schulz kernels."""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewtonSchulzConfig:
  """Static options of `newton_schulz` (hashable: it is a jit static argument).

  Attributes:
    tile: square tile of the Gram products. The fused TPU kernel computes the Gram matrices
      X X^T and A A tile by tile, lower triangle only; the tiled path uses it as its block.
    block_k: contraction block of the tiled path.
    fused_vmem_bytes: the fused TPU kernel (every step in one launch, the matrix resident in
      VMEM) is used when its working set fits in this many bytes; also its VMEM limit.
    gpu_fused_max_elements: the fused GPU kernel (one program per matrix, held in registers)
      is used up to this many elements per matrix.
    gpu_tile: square output tile of the GPU tiled path (registers bound it well below `tile`).
    gpu_block_k: contraction block of the GPU tiled path.
    interpret: run the Pallas kernels in interpret mode (CPU tests).
    num_warps: Triton warps per program.
  """
  tile: int = 256
  block_k: int = 512
  fused_vmem_bytes: int = 96 * 2**20
  gpu_fused_max_elements: int = 128 * 128
  gpu_tile: int = 64
  gpu_block_k: int = 32
  interpret: Any = False
  num_warps: int = 4

  def __post_init__(self):
    for name in ("tile", "block_k", "gpu_tile", "gpu_block_k"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 8 or v & (v - 1):
        raise ValueError(f"NewtonSchulzConfig: {name} must be a power of two >= 8, got {v!r}")
    for name in ("fused_vmem_bytes", "gpu_fused_max_elements", "num_warps"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 0:
        raise ValueError(f"NewtonSchulzConfig: {name} must be a non-negative int, got {v!r}")
