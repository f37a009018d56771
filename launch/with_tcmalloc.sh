#!/usr/bin/env bash
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
# Runs a command with tcmalloc preloaded, keeping the memory it frees (CPU hosts).
#
#   launch/with_tcmalloc.sh python experiments/bench_memory_scan.py --memories matrix --lengths 8192
#
# Why: XLA:CPU allocates the temporaries and outputs of a compiled program on every call.
# glibc malloc serves each large buffer with freshly mapped pages and unmaps it when it is
# freed, so every call pays a page fault (and the kernel zeroing the page) per 4 KiB it
# touches: for the chunked memory scan's forward+backward at T=8192 (B=8, H=4, d=128) that is
# 285k faults and about a quarter of the call's time (experiments/BENCHMARKS.md).
# tcmalloc with TCMALLOC_RELEASE_RATE=0 keeps freed pages in the process, so from the second
# call on the same buffers come back without faults, as XLA's pooled allocators do on GPU and
# TPU. The process then holds on to its peak memory until it exits.
#
# The library: Debian/Ubuntu `apt-get install libtcmalloc-minimal4` (or google-perftools);
# found with ldconfig, or name it with NL_JAX_TCMALLOC=/path/to/libtcmalloc_minimal.so.4.
# TCMALLOC_RELEASE_RATE already in the environment is kept.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

lib="${NL_JAX_TCMALLOC:-}"
if [ -z "$lib" ]; then
  lib="$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true) |
    awk '/libtcmalloc_minimal\.so\.4 |libtcmalloc\.so\.4 / {print $NF; exit}')"
fi
if [ -z "$lib" ]; then
  echo "$0: no tcmalloc library found (ldconfig -p lists no libtcmalloc_minimal.so.4 or" \
    "libtcmalloc.so.4); install one (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)" \
    "or set NL_JAX_TCMALLOC=/path/to/the/library" >&2
  exit 1
fi
if [ ! -r "$lib" ]; then
  echo "$0: tcmalloc library '$lib' (NL_JAX_TCMALLOC or ldconfig) is not a readable file" >&2
  exit 1
fi

export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
export TCMALLOC_RELEASE_RATE="${TCMALLOC_RELEASE_RATE:-0}"
exec "$@"
