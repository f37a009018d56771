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
# Creates a Cloud TPU VM slice, installs nl_jax on every worker and runs launch/train.py on all
# workers with the same config (JAX's cluster auto-detection gives each its process id).
#
#   TPU_NAME=nl-hope ZONE=us-east5-a ACCELERATOR=v5p-128 \
#   CONFIG=experiments/configs/lm.py:hope,1_3b,files WORKDIR=gs://my-bucket/runs/hope_1_3b \
#   TRAIN_FILES='gs://my-bucket/fineweb-edu/train/*.parquet' \
#   EVAL_FILES='gs://my-bucket/fineweb-edu/val/*.parquet' TOKENIZER=spm:/home/$USER/spm.model \
#   launch/tpu_vm.sh all            # create + setup + train
#   launch/tpu_vm.sh train          # (re)run training only: resumes from the newest checkpoint
#   launch/tpu_vm.sh delete
#
# Extra arguments after the command go to launch/train.py (e.g. --config.train.steps=1000).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5p-8}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5}"
CONFIG="${CONFIG:-experiments/configs/lm.py:hope,760m}"
WORKDIR="${WORKDIR:?set WORKDIR (a gs:// path, shared by all workers)}"
REPO="${REPO:-https://github.com/nl-jax/nl_jax.git}"
BRANCH="${BRANCH:-main}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
CMD="${1:-all}"
shift || true
EXTRA_ARGS="$*"

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}

create() {
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
}

setup() {
  ssh_all "set -e; if [ ! -d nl_jax ]; then git clone -b $BRANCH $REPO nl_jax; fi; \
    cd nl_jax && git pull --ff-only && python3 -m venv .venv && . .venv/bin/activate && \
    pip install -q -U pip && pip install -q -e '.[tokenizers]' 'jax[tpu]'"
}

train() {
  # Same command on every worker; jax.distributed.initialize() auto-detects the slice.
  ssh_all "cd nl_jax && . .venv/bin/activate && \
    NL_JAX_TRAIN_FILES='${TRAIN_FILES:-}' NL_JAX_EVAL_FILES='${EVAL_FILES:-}' \
    NL_JAX_TOKENIZER='${TOKENIZER:-byte}' \
    python launch/train.py --config=$CONFIG --workdir=$WORKDIR --distributed=on $EXTRA_ARGS \
    2>&1 | tee -a train_\$(hostname).log"
}

case "$CMD" in
  create) create ;;
  setup) setup ;;
  train) train ;;
  all) create; setup; train ;;
  delete) gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet ;;
  *) echo "usage: $0 {all|create|setup|train|delete} [launch/train.py flags]" >&2; exit 2 ;;
esac
