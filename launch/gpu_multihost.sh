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
# Multi-host GPU training: one process per node (all of its GPUs), the same config everywhere.
#
# SLURM (one task per node; JAX reads the SLURM environment):
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu_multihost.sh \
#     experiments/configs/lm.py:hope,1_3b,files /shared/runs/hope_1_3b
#
# Without SLURM (run on every node; node 0's address is the coordinator):
#   COORDINATOR=10.0.0.1:1234 NUM_NODES=4 NODE_RANK=<0..3> \
#     launch/gpu_multihost.sh experiments/configs/lm.py:hope,1_3b,files /shared/runs/hope_1_3b
#
# The workdir must be on storage all nodes share. Extra arguments go to launch/train.py.
# Data: export NL_JAX_TRAIN_FILES / NL_JAX_EVAL_FILES / NL_JAX_TOKENIZER (see
# experiments/configs/common.py).
#SBATCH --job-name=nl_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

CONFIG="${1:?usage: $0 CONFIG WORKDIR [train.py flags]}"
WORKDIR="${2:?usage: $0 CONFIG WORKDIR [train.py flags]}"
shift 2
cd "$(dirname "$0")/.."

if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${COORDINATOR:-}" ]; then
  # srun starts one task per node; jax.distributed.initialize() auto-detects SLURM.
  exec srun --kill-on-bad-exit=1 python launch/train.py --config="$CONFIG" \
    --workdir="$WORKDIR" --distributed=on "$@"
fi

: "${COORDINATOR:?set COORDINATOR=host:port (or run under SLURM)}"
: "${NUM_NODES:?set NUM_NODES}"
: "${NODE_RANK:?set NODE_RANK}"
export JAX_COORDINATOR_ADDRESS="$COORDINATOR"
export JAX_NUM_PROCESSES="$NUM_NODES"
export JAX_PROCESS_ID="$NODE_RANK"
exec python launch/train.py --config="$CONFIG" --workdir="$WORKDIR" --distributed=on "$@"
