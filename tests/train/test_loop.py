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
"""In-process training runs: exact resume, NaN policy, 8 vs 1 devices, restore 8 -> 4."""

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from nl_jax import data as data_lib
from nl_jax.optim import partition
from nl_jax.train import checkpoint as ckpt_lib
from nl_jax.train import loop
from nl_jax.train import mesh as mesh_lib
from nl_jax.train import metrics as metrics_lib
from tests.train.conftest import tiny_config


def _train_losses(workdir):
  rows = [r for r in metrics_lib.read_jsonl(workdir) if r["split"] == "train"]
  return {r["step"]: r["loss"] for r in rows}


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_is_bitwise_exact(tmp_path, compile_cache):
  """2N steps in one go == N steps, stop, resume (new process state), N more: bitwise."""
  del compile_cache
  full = loop.train_and_evaluate(tiny_config(steps=6, async_checkpointing=True),
                                 str(tmp_path / "full"))
  first = loop.train_and_evaluate(tiny_config(steps=3, async_checkpointing=True),
                                  str(tmp_path / "split"))
  assert first["step"] == 3 and first["resumed_from"] is None
  second = loop.train_and_evaluate(
      tiny_config(steps=6, async_checkpointing=True, allow_config_changes=True),
      str(tmp_path / "split"))
  assert second["resumed_from"] == 3 and second["step"] == 6
  _assert_trees_equal(full["params"], second["params"])
  full_losses, split_losses = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "split")
  assert sorted(split_losses) == list(range(1, 7))
  assert split_losses == full_losses  # exact float equality, every step
  assert full_losses[6] < full_losses[1]
  # The newest checkpoint is complete and loads for evaluation with the trained weights.
  model, config = ckpt_lib.load_for_eval(str(tmp_path / "split"))
  assert config.model_name == "transformer_pp"
  from flax import nnx  # pylint: disable=g-import-not-at-top

  _assert_trees_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), second["params"])


def _poison(monkeypatch, bad_steps):
  """Makes the loss of the given (1-based) steps NaN through the batch's loss mask."""
  real = loop.global_batch
  calls = {"train": 0}

  def poisoned(setup, local):
    # Eval batches are not poisoned (eval_every=0: only the final eval sees them).
    if local["inputs"].shape[0] == setup.resolved.data_config.batch_size:
      calls["train"] += 1
      if calls["train"] in bad_steps:
        local = dict(local, loss_mask=np.full_like(local["loss_mask"], np.nan))
    return real(setup, local)

  monkeypatch.setattr(loop, "global_batch", poisoned)


def test_nan_raise_names_step_and_metric(tmp_path, monkeypatch, compile_cache):
  del compile_cache
  _poison(monkeypatch, {2})
  with pytest.raises(loop.NonFiniteError, match=r"\['grad_norm', 'loss'.*at step 2"):
    loop.train_and_evaluate(tiny_config(steps=4), str(tmp_path))


def test_nan_skip_within_budget_then_exceeded(tmp_path, monkeypatch, compile_cache):
  del compile_cache
  _poison(monkeypatch, {2})
  result = loop.train_and_evaluate(
      tiny_config(steps=3, nan_policy="skip", nan_skip_budget=1), str(tmp_path / "a"))
  assert result["nan_skips"] == 1 and result["step"] == 3
  assert np.isfinite(result["train_loss"])
  # The skipped step's update was dropped: Adam's count saw only the 2 good steps.
  counts = [int(v) for p, v in jax.tree_util.tree_leaves_with_path(
      result["train_state"]["opt_state"]) if "count" in jax.tree_util.keystr(p)]
  assert counts and all(c == 2 for c in counts), counts
  assert int(result["train_state"]["step"]) == 3
  assert int(result["train_state"]["nan_skips"]) == 1
  _poison(monkeypatch, {2, 3})
  with pytest.raises(loop.NonFiniteError, match=r"at step 3.*exceed train.nan_skip_budget=1"):
    loop.train_and_evaluate(
        tiny_config(steps=4, nan_policy="skip", nan_skip_budget=1), str(tmp_path / "b"))


def test_metrics_of_a_step_are_fetched_after_the_next_step_is_dispatched(
    tmp_path, monkeypatch, compile_cache):
  """No host synchronisation per step: step t's metrics reach the host only once step t+1
  is queued; steps that save or evaluate (they need the donated parameters) report first."""
  del compile_cache
  events = []
  real_make, real_host = loop.make_train_step, loop._host_metrics  # pylint: disable=protected-access

  def make_train_step(setup):
    step_fn = real_make(setup)

    def dispatch(*args):
      out = step_fn(*args)
      events.append("dispatch")
      return out
    return dispatch

  def host_metrics(metrics):
    events.append("fetch")
    return real_host(metrics)

  monkeypatch.setattr(loop, "make_train_step", make_train_step)
  monkeypatch.setattr(loop, "_host_metrics", host_metrics)
  loop.train_and_evaluate(tiny_config(steps=6, checkpoint_every=3), str(tmp_path))
  # Steps 1-2: fetched after the next dispatch; 3 saves: fetched at once; 4-5 deferred; 6 last.
  assert events == ["dispatch", "dispatch", "fetch", "dispatch", "fetch", "fetch",
                    "dispatch", "dispatch", "fetch", "dispatch", "fetch", "fetch"], events


def test_8_devices_match_1_device_and_restore_onto_4(tmp_path, compile_cache):
  del compile_cache
  devices = jax.devices()
  assert len(devices) == 8
  c8 = tiny_config(steps=3)
  c8.mesh.update(data=2, fsdp=2, tensor=2)
  r8 = loop.train_and_evaluate(c8, str(tmp_path / "w8"))
  c1 = tiny_config(steps=3)
  c1.mesh.data = 1
  r1 = loop.train_and_evaluate(c1, str(tmp_path / "w1"), devices=devices[:1])
  l8, l1 = _train_losses(tmp_path / "w8"), _train_losses(tmp_path / "w1")
  np.testing.assert_allclose([l8[s] for s in (1, 2, 3)], [l1[s] for s in (1, 2, 3)],
                             rtol=2e-6)
  for x, y in zip(jax.tree.leaves(r8["params"]), jax.tree.leaves(r1["params"]), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  # Some parameter really was split over fsdp and tensor on the 8-device mesh.
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(r8["params"])}
  assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs), specs

  # Restore the 8-device checkpoint onto a 4-device mesh of another shape: bitwise equal.
  c4 = tiny_config(steps=4)
  c4.mesh.update(data=4, fsdp=1, tensor=1)
  setup4 = loop.build_setup(c4, devices=devices[:4])
  it = data_lib.make_process_iterator(setup4.resolved.data_config, 0, 1)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "w8"))
  params4, state4 = ckpt.restore(3, setup4.abstract_params, setup4.abstract_train_state, it)
  ckpt.close()
  _assert_trees_equal(params4, r8["params"])
  assert all(x.sharding.mesh.size == 4 for x in jax.tree.leaves(params4))
  assert int(state4["step"]) == 3
  _assert_trees_equal(state4["opt_state"], r8["train_state"]["opt_state"])


@pytest.mark.slow
def test_hope_8_devices_match_1_device_with_sharded_memory_initial_states(tmp_path, compile_cache):
  """Hope's per-head memory initial states are split over fsdp (config.PARAM_RULES): the
  sharded step, whose fresh memory states gather them, equals one device's (~70 s)."""
  del compile_cache
  c8 = tiny_config("hope", steps=2)
  c8.mesh.update(data=2, fsdp=2, tensor=2)
  r8 = loop.train_and_evaluate(c8, str(tmp_path / "w8"))
  c1 = tiny_config("hope", steps=2)
  c1.mesh.data = 1
  r1 = loop.train_and_evaluate(c1, str(tmp_path / "w1"), devices=jax.devices()[:1])
  specs = {partition.path_str(p): tuple(x.sharding.spec)
           for p, x in jax.tree_util.tree_leaves_with_path(r8["params"])}
  assert specs["blocks/0/smt/out_init/w1"] == ("tensor", None, "fsdp"), specs
  np.testing.assert_allclose(r8["train_loss"], r1["train_loss"], rtol=2e-6)
  for x, y in zip(jax.tree.leaves(r8["params"]), jax.tree.leaves(r1["params"]), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_train_step_constrains_activations_to_the_batch_axes():
  """The lowered train step shards the residual stream like the batch (embeddings and every
  block output); a bare model call leaves it to XLA.

  Without these constraints XLA's partitioner replicated the batch of the FSDP-sharded
  transformer_760m step on a v5p:4x4x4 slice (348.8 GB of temporaries per chip, measured
  with launch/compile_only.py); with them the step needs 4.4 GB per chip.
  """
  n_layers = 2
  config = tiny_config(n_layers=n_layers)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 4, 1
  setup = loop.build_setup(config, devices=jax.devices()[:8])
  shape = (config.data.batch_size, config.data.seq_len)
  spec = data_lib.batch_spec(setup.resolved.data_config)
  batch = {k: jax.ShapeDtypeStruct(shape, spec[k][1], sharding=setup.batch_sh)
           for k in data_lib.BATCH_KEYS}
  rest = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), setup.rest)
  text = loop.make_train_step(setup).trace(setup.abstract_params, setup.abstract_train_state,
                                           batch, rest).lower().as_text()
  want = '[{"data", "fsdp"}, {}, {}]'
  # Embeddings plus one constraint per block, in the forward (the backward may add more).
  assert sum(want in ln for ln in text.splitlines() if "sharding_constraint" in ln) >= (
      n_layers + 1), text[:2000]

  def bare_forward(params, tokens):
    return nnx.merge(setup.graphdef, params, setup.rest)(tokens)[0]

  bare = jax.jit(bare_forward).lower(setup.abstract_params,
                                     jax.ShapeDtypeStruct(shape, np.int32)).as_text()
  assert want not in bare

  # Hope with the paper's CMS objective runs its own segment driver: constrained as well.
  from nl_jax.models import common, registry  # noqa: PLC0415

  hope = registry.build_model(registry.model_config("hope", "tiny", n_layers=1,
                                                    cms=dict(objective="ntp")), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(hope)

  def hope_forward(state, tokens):
    with common.activation_sharding(mesh_lib.activation_sharding(setup.mesh)):
      return nnx.merge(graphdef, state)(tokens)[0]

  hope_text = jax.jit(hope_forward).lower(state, jax.ShapeDtypeStruct((8, 32), np.int32))
  assert want in hope_text.as_text()
