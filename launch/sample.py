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
r"""Generates text from a trained workdir: ``python launch/sample.py --workdir=<dir> --prompt=...``.

Loads the newest checkpoint (``--step`` for another) with the run's tokenizer and prints the
prompt followed by ``--num_tokens`` generated tokens (greedy; ``--temperature`` > 0 samples).
The memory state is carried: each further ``--prompt`` continues the same stream after the
previous continuation, so the model's memories keep what it read and wrote::

  python launch/sample.py --workdir=/tmp/hope_tiny --prompt="ROMEO:"
  python launch/sample.py --workdir=/tmp/hope_tiny --prompt="JULIET:" --prompt="ROMEO:" \
      --num_tokens=100 --temperature=0.8
"""

import os
import sys

from absl import app, flags

# `python launch/sample.py` puts launch/ (not the repo root) on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (launch/train.py --workdir).")
_PROMPT = flags.DEFINE_multi_string(
    "prompt", ["ROMEO:\n"], "Text to continue; repeat the flag to continue the same stream.")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 200, "Tokens to generate after each prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed when sampling.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from nl_jax.train import cli  # pylint: disable=g-import-not-at-top

  if _NUM_TOKENS.value < 1:
    raise cli.UserError(f"--num_tokens must be >= 1, got {_NUM_TOKENS.value}")
  if _TEMPERATURE.value < 0:
    raise cli.UserError(f"--temperature must be >= 0, got {_TEMPERATURE.value}")
  workdir = cli.check_workdir(_WORKDIR.value, must_exist=True)
  from nl_jax.train import metrics, sampling  # pylint: disable=g-import-not-at-top

  metrics.quiet_library_logs()
  try:
    model, tokenizer, config = sampling.load_trained(workdir, step=_STEP.value)
  except FileNotFoundError as e:
    raise cli.UserError(f"--workdir={workdir}: {e}; train first with launch/train.py") from e
  print(f"# {config.model_name} from {workdir}", flush=True)
  state = None
  for i, prompt in enumerate(_PROMPT.value):
    text, state = sampling.continuation(model, tokenizer, prompt, _NUM_TOKENS.value,
                                        memory_state=state, temperature=_TEMPERATURE.value,
                                        seed=_SEED.value + i)
    print(prompt + text, flush=True)
    if i + 1 < len(_PROMPT.value):
      print("-" * 40, flush=True)


if __name__ == "__main__":
  from nl_jax.train import cli as _cli  # pylint: disable=g-import-not-at-top

  _cli.run(main, config_flag=None)
