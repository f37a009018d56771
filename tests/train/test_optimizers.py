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
"""Optimizers in the real training loop: rule assignment, layer inputs, one step of each."""

import re

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.layers import projection
from nl_jax.models import registry
from nl_jax.optim import partition
from nl_jax.train import config as config_lib
from nl_jax.train import loop
from nl_jax.train import optimizers
from tests.train.conftest import tiny_config

_PRESETS = [(m, p) for m in config_lib.MODEL_NAMES for p in sorted(registry.presets(m))]


def _recorded_paths(model_name, preset):
  """Paths of the weights whose input goes through the projection helper (1 layer)."""
  cfg = registry.model_config(model_name, preset, n_layers=1)
  seen = {}

  def run():
    model = registry.build_model(cfg, rngs=nnx.Rngs(0))
    projection.tag_param_paths(model)
    tokens = jnp.zeros((1, cfg.alignment if hasattr(cfg, "alignment") else 16), jnp.int32)
    with projection.recording() as s:
      model(tokens, model.init_memory(1), targets=tokens)
    seen.update(s)

  jax.eval_shape(run)
  return {_layer0(p) for p in seen}


def _layer0(path):
  """Block 0's path of a block parameter in either layout (unrolled or scan_layers)."""
  return re.sub(r"^(blocks/\d+|scanned_blocks)/", "blocks/0/", path)


@pytest.mark.parametrize("model_name,preset", _PRESETS)
def test_every_projection_is_orthogonalized_and_embeddings_are_not(model_name, preset):
  cfg = registry.model_config(model_name, preset)
  abstract = nnx.eval_shape(lambda: registry.build_model(cfg, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  assignments = partition.assign(params, config_lib.PARAM_RULES)
  by_path = {a.path: a for a in jax.tree.leaves(assignments, is_leaf=partition.is_assignment)}
  recorded = _recorded_paths(model_name, preset)
  assert recorded, "no weight went through the projection helper"
  # Every weight multiplying a layer input (in every block) is a projection matrix, except
  # the gates and the tied read-out, which are named non-matrices.
  for path, a in by_path.items():
    if _layer0(path) not in recorded:
      continue
    if a.kind == "other":
      assert a.reason in ("gate", "embedding/unembedding"), (path, a)
    else:
      assert a.kind == "projection" and a.is_matrix, (path, a)
  names = {_layer0(p).removeprefix("blocks/0/") for p in by_path}
  expected = {"transformer_pp": ["attn/wq", "attn/wk", "attn/wv", "attn/wo", "mlp/w_up"],
              "hope_attention": ["attn/wq", "attn/wo"],
              "titans": ["titans/wq", "titans/wk", "titans/wv", "titans/wo", "titans/w_gate"],
              "hope": ["smt/wq", "smt/wk", "smt/wv", "smt/wo", "smt/wg"]}[model_name]
  for name in expected:
    assert name in names
    for path, a in by_path.items():
      if path.endswith(name):
        assert a.kind == "projection" and path in {p for p in by_path}, (path, a)
        assert _layer0(path) in recorded, path
  # The attention / Titans projections are 3-D and fold heads x head_dim into one axis (a
  # stacked layers axis in front is a batch axis).
  for path, a in by_path.items():
    shape = a.shape[1:] if path.startswith("scanned_blocks/") else a.shape
    if re.search(r"/(wq|wk|wv)$", path) and len(shape) == 3:
      assert a.matrix_shape == (shape[0], shape[1] * shape[2])
    if re.search(r"/wo$", path) and len(shape) == 3:
      assert a.matrix_shape == (shape[0] * shape[1], shape[2])
  for path, a in by_path.items():
    if path.startswith(("embed/", "lm_head")) or "norm" in path or "conv/kernel" in path:
      assert not a.is_matrix, (path, a)
  # The startup table names every parameter once.
  table = optimizers.describe_rules(config_lib.default_config(model_name).optimizer, assignments)
  assert len(table.splitlines()) == len(by_path)


def _fixed_batch(setup):
  from nl_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  it = data_lib.make_process_iterator(setup.resolved.data_config, 0, 1, split="validation",
                                      num_batches=1)
  return loop.global_batch(setup, next(iter(it)))


_LRS = {"sgd": 0.3, "dgd": 0.3, "delta_momentum": 0.03, "deep_momentum": 0.03}


def _run(tmp_path, name, steps, model=None, **opt):
  c = tiny_config(steps=steps)
  c.model.update(model or {})
  c.optimizer.name = name
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.learning_rate = _LRS.get(name, 3e-3)
  c.optimizer.update(opt)
  setup = loop.build_setup(c, devices=jax.devices()[:1])
  params0, _, rest = loop.init_state(setup, c.train.seed)
  params0 = jax.tree.map(np.asarray, params0)
  result = loop.train_and_evaluate(c, str(tmp_path / name), devices=jax.devices()[:1])
  return setup, params0, rest, result


@pytest.mark.parametrize("name", config_lib.OPTIMIZERS)
def test_three_steps_lower_the_loss_on_a_fixed_batch(tmp_path, compile_cache, name):
  del compile_cache
  setup, params0, rest, result = _run(tmp_path, name, 3)
  eval_step = loop.make_eval_step(setup)
  batch = _fixed_batch(setup)
  before = float(eval_step(params0, batch, rest)[0])
  after = float(eval_step(result["params"], batch, rest)[0])
  assert np.isfinite(after) and after < before, (name, before, after)


def test_dgd_update_differs_from_sgd(tmp_path, compile_cache):
  """Same batch, same rate, no weight decay or momentum: only DGD's preconditioning differs."""
  del compile_cache
  common = dict(weight_decay=0.0, momentum=0.0, grad_clip=0.0)
  _, p0, _, sgd = _run(tmp_path, "sgd", 1, **common)
  _, _, _, dgd = _run(tmp_path, "dgd", 1, **common)
  d_sgd = jax.tree.map(lambda a, b: np.asarray(a) - b, sgd["params"], p0)
  d_dgd = jax.tree.map(lambda a, b: np.asarray(a) - b, dgd["params"], p0)
  attn = lambda t: t["blocks"][0]["attn"]  # noqa: E731
  for k in ("wq", "wk", "wv", "wo"):
    diff = np.abs(attn(d_dgd)[k] - attn(d_sgd)[k]).max()
    assert diff > 1e-3 * np.abs(attn(d_sgd)[k]).max(), k
  # Non-projections (embedding, norms) take the SGD step in both.
  np.testing.assert_allclose(d_dgd["embed"]["embedding"], d_sgd["embed"]["embedding"],
                             rtol=1e-5, atol=1e-8)


def test_dgd_with_adam_learning_rate_steps_the_rest_as_adamw(tmp_path, compile_cache):
  """optimizer.kwargs.adam_learning_rate: the projections keep DGD's step, every other
  parameter takes the AdamW step of an adamw run at that rate (same batch, one step)."""
  del compile_cache
  common = dict(weight_decay=0.0, grad_clip=0.0)
  _, p0, _, dgd = _run(tmp_path, "dgd", 1, **common)
  setup, _, _, mixed = _run(tmp_path / "mixed", "dgd", 1, kwargs={"adam_learning_rate": 3e-3},
                            **common)
  table = optimizers.describe_rules(setup.config.optimizer, optimizers.rule_assignment(
      setup.abstract_params, setup.config.sharding))
  assert re.search(r"embed/embedding .*-> adamw", table), table
  assert re.search(r"attn/wq .*-> dgd", table), table
  _, _, _, adamw = _run(tmp_path, "adamw", 1, **common)
  delta = lambda r: jax.tree.map(lambda a, b: np.asarray(a) - b, r["params"], p0)  # noqa: E731
  d_dgd, d_mixed, d_adamw = delta(dgd), delta(mixed), delta(adamw)
  for k in ("wq", "wk", "wv", "wo"):
    np.testing.assert_allclose(d_mixed["blocks"][0]["attn"][k], d_dgd["blocks"][0]["attn"][k],
                               rtol=1e-5, atol=1e-8)
  for leaf in (lambda t: t["embed"]["embedding"], lambda t: t["final_norm"]["scale"]):
    np.testing.assert_allclose(leaf(d_mixed), leaf(d_adamw), rtol=1e-5, atol=1e-8)
    assert np.abs(leaf(d_mixed) - leaf(d_dgd)).max() > 1e-4


@pytest.mark.parametrize("name,scan_layers", [("muon", False), ("m3", False), ("m3", True)])
def test_attention_projection_update_is_orthogonal(tmp_path, compile_cache, name, scan_layers):
  del compile_cache
  lr = 3e-3
  model = dict(n_layers=2, scan_layers=True) if scan_layers else None
  _, p0, _, res = _run(tmp_path, name, 1, model=model, weight_decay=0.0, grad_clip=0.0,
                       learning_rate=lr)
  if scan_layers:  # each layer's slice of the stacked weight is its own matrix
    layers = [(res["params"]["scanned_blocks"]["attn"], p0["scanned_blocks"]["attn"], i)
              for i in range(2)]
  else:
    layers = [(res["params"]["blocks"][0]["attn"], p0["blocks"][0]["attn"], None)]
  for (after, before, i), k in ((layer, k) for layer in layers for k in ("wq", "wo")):
    delta = np.asarray(after[k]) - before[k]
    delta = delta if i is None else delta[i]
    m = delta.reshape(64, 64) / lr  # wq: embed x heads*head_dim; wo: heads*head_dim x embed
    s = np.linalg.svd(m, compute_uv=False)
    # Newton-Schulz keeps the gradient's null space (one step's gradient of wq is rank
    # deficient) and 5 quintic steps leave the smallest directions short of 1: at least 90%
    # of the rest lie in the quintic's band (an AdamW step's sign-like matrix spreads over
    # [0, ~16]).
    live = s[s > 1e-3 * s.max()]
    assert live.size >= 16, (name, k, s)
    assert live.max() < 1.5, (name, k, live)
    assert np.mean(live > 0.5) >= 0.9, (name, k, live)


def test_dgd_without_recorded_input_stops_before_compiling(monkeypatch):
  c = tiny_config("hope")
  c.optimizer.name = "dgd"
  real = partition.assign_one

  def fake(path, shape, rules):
    a = real(path, shape, rules)
    if a.kind == "initial_state":
      # Pretend the CMS initial states were projections: their matmuls use the fast weights.
      return a._replace(kind="projection")
    return a

  monkeypatch.setattr(partition, "assign_one", fake)
  with pytest.raises(ValueError, match=r"blocks/0/cms/level_0_init/w_down"):
    loop.build_setup(c, devices=jax.devices()[:1])
