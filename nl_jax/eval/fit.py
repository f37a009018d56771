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
"""A small training loop for the experiments: fit a model on batches of generated tasks.

The trainer (`nl_jax.train`) is the tool for language-model pre-training at any scale; the
experiments here also need to train on *task* batches (formal languages, MQAR, NIAH) whose
loss is restricted to answer tokens, and to switch tasks mid-run (continual stream). This loop
does that with one jitted step per batch shape. Batches have the trainer's schema
(nl_jax.data.batch: ``inputs``, ``targets``, ``segment_ids``, ``positions``, ``loss_mask``), as
`nl_jax.eval.examples.make_batch` and `lm_batch` make them.
"""

import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nl_jax.data import batch as batch_lib
from nl_jax.eval import text as text_lib
from nl_jax.eval.examples import encode, make_batch
from nl_jax.eval.runner import model_alignment
from nl_jax.losses import masked_cross_entropy


def lm_batch(rng: np.random.Generator, batch_size: int, seq_len: int,
             split: str = "train") -> dict[str, np.ndarray]:
  """Random windows of corpus text as a next-token batch (loss on every position)."""
  base = encode(text_lib.corpus_text(split))
  starts = rng.integers(0, len(base) - seq_len - 1, size=batch_size)
  rows = np.stack([base[s:s + seq_len + 1] for s in starts]).astype(np.int32)
  mask = np.ones((batch_size, seq_len), np.float32)
  return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "loss_mask": mask,
          "segment_ids": np.ones((batch_size, seq_len), np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                       (batch_size, seq_len)).copy()}


def examples_batch(make_examples: Callable[[np.random.Generator], list], rng,
                   length: int, align: int = 1) -> dict[str, np.ndarray]:
  """A task batch of ``make_examples(rng)``, padded to ``length`` (one shape: one compile).

  The loss is only on the answer tokens.
  """
  examples = make_examples(rng)
  longest = max(len(e.tokens) for e in examples)
  if longest > length:
    raise ValueError(f"an example has {longest} tokens > length={length}; raise length")
  return make_batch(examples, pad_to_multiple=align, length=length)


def _loss(model, batch):
  # The CMS "ntp" objective learns from its own next-token loss here (tokens shifted left),
  # not from the task's loss mask: targets / loss_mask are left out of the call.
  logits_BxTxV, _, _ = model(batch["inputs"], None, segment_ids=batch["segment_ids"],
                             positions=batch["positions"])
  total, count = masked_cross_entropy(logits_BxTxV, batch["targets"], batch["loss_mask"])
  return total / jnp.maximum(count, 1.0)


def train(model, batches: Iterator[dict], num_steps: int,
          tx: optax.GradientTransformation | None = None, *, log_every: int = 0,
          callback: Callable[[int, float], None] | None = None,
          max_seconds: float | None = None) -> dict:
  """Trains ``model`` in place.

  Args:
    model: an nl_jax model (registry interface); its parameters are updated in place.
    batches: iterator of batches (see the module docstring).
    num_steps: optimizer steps.
    tx: optax optimizer (default AdamW, lr 3e-3, warmup-cosine, clip 1.0).
    log_every: print the loss every this many steps (0 = never).
    callback: ``callback(step, loss)`` after every step (e.g. a live plot).
    max_seconds: stop after the first step that ends this many seconds after the end of
      step 0 (a wall-clock budget that leaves out step 0, i.e. compilation, which can take
      minutes for the memory models on a loaded CPU; None = run all ``num_steps``). The
      schedule of ``tx`` is not shortened: a stopped run ends where its schedule was.

  Returns:
    ``{"losses": [...], "seconds": wall time, "diverged_at": None or the first step whose
    loss was not finite}``. Training stops at a non-finite loss and keeps the parameters that
    last gave a finite loss, so a diverged run is reported instead of silently scored.
  """
  import flax.nnx as nnx  # noqa: PLC0415

  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if tx is None:
    warmup = max(num_steps // 20, 1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup, max(num_steps, warmup + 1),
                                           3e-4), weight_decay=0.01))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, rest, batch):
    def loss_fn(p):
      return _loss(nnx.merge(graphdef, p, rest), batch)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  align = model_alignment(model)
  losses, t0, diverged_at, last_good = [], time.time(), None, params
  t_first = None  # end of step 0 (after compilation): the start of the max_seconds budget
  for i in range(num_steps):
    batch = next(batches)
    batch_lib.check_keys(batch, "fit.train")
    if batch["inputs"].shape[1] % align:
      raise ValueError(f"batch length {batch['inputs'].shape[1]} is not a multiple of the "
                       f"model's alignment {align}; pad with make_batch(pad_to_multiple=...)")
    new_params, new_opt_state, loss = step(params, opt_state, rest,
                                           {k: jnp.asarray(v) for k, v in batch.items()})
    loss = float(loss)
    losses.append(loss)
    if not np.isfinite(loss):
      diverged_at = i
      params = last_good  # the parameters of the last step whose loss was finite
      print(f"step {i:5d}  loss {loss} - not finite, training stopped", flush=True)
      break
    last_good = params
    params, opt_state = new_params, new_opt_state
    if callback is not None:
      callback(i, loss)
    if log_every and (i % log_every == 0 or i == num_steps - 1):
      print(f"step {i:5d}  loss {loss:.4f}  ({time.time() - t0:.1f}s)", flush=True)
    t_first = time.time() if t_first is None else t_first
    if max_seconds is not None and time.time() - t_first >= max_seconds and i < num_steps - 1:
      print(f"step {i:5d}  loss {loss:.4f}  - time budget of {max_seconds:.0f}s spent, "
            "training stopped", flush=True)
      break
  nnx.update(model, params)
  return {"losses": losses, "seconds": time.time() - t0, "diverged_at": diverged_at}
