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
"""Text in, text out: load a trained workdir with its tokenizer, generate continuations.

``load_trained(workdir)`` returns ``(model, tokenizer, config)`` from the newest checkpoint;
`continuation` generates from a text prompt with `nl_jax.models.generate.generate`, carrying
the memory state (pass the returned state back to continue the stream). The training loop
uses `continuation` for the sample printed at every eval; ``launch/sample.py`` is the
command line.
"""

from typing import Any

import jax
import numpy as np


def load_trained(workdir: str, *, step: int | None = None):
  """``(model, tokenizer, config)`` of a training workdir (newest checkpoint by default).

  Args:
    workdir: a training workdir (or its ``checkpoints/`` or ``checkpoints/<step>``).
    step: which checkpoint (default: the newest committed one).

  Raises:
    FileNotFoundError: no workdir or no committed checkpoint there.
  """
  from nl_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  from nl_jax.train import checkpoint  # pylint: disable=g-import-not-at-top

  model, config = checkpoint.load_for_eval(workdir, step=step)
  return model, tokenizers.get_tokenizer(config.data.tokenizer), config


def encode_prompt(tokenizer, prompt: str) -> np.ndarray:
  """``[1, P]`` int32 ids of ``prompt`` (BOS alone for an empty prompt)."""
  ids = np.asarray(tokenizer.encode(prompt), np.int32)
  if ids.size == 0:
    ids = np.asarray([tokenizer.bos_id], np.int32)
  return ids[None]


def continuation(model, tokenizer, prompt: str, num_tokens: int, *, memory_state=None,
                 temperature: float = 0.0, seed: int = 0) -> tuple[str, Any]:
  """Generates ``num_tokens`` after ``prompt``; ``(text, memory state after it)``.

  Args:
    model: an nl_jax model (e.g. from `load_trained`).
    tokenizer: its tokenizer.
    prompt: the text to continue.
    num_tokens: tokens to generate (>= 1).
    memory_state: the state to continue from (None: fresh memory).
    temperature: 0 = greedy, else sampling at this temperature.
    seed: PRNG seed when sampling.
  """
  from nl_jax.models.generate import generate  # pylint: disable=g-import-not-at-top

  rng = jax.random.key(seed) if temperature > 0 else None
  tokens_BxN, state = generate(model, encode_prompt(tokenizer, prompt), int(num_tokens),
                               memory_state, rng=rng, temperature=temperature)
  return tokenizer.decode(np.asarray(tokens_BxN)[0]), state


def model_on_one_device(graphdef, params, rest):
  """The model from the train loop's (possibly mesh-sharded) parameters, on one device.

  Generation feeds a batch of one, which the data-parallel mesh cannot split; one process
  only (every array must be addressable here).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  device = jax.local_devices()[0]
  params, rest = jax.device_put((params, rest), device)
  return nnx.merge(graphdef, params, rest)


def tokenizer_of(data_config):
  """The tokenizer a data config names (``data.tokenizer``)."""
  from nl_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

  return tokenizers.get_tokenizer(data_config.tokenizer)
