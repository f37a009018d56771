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
"""Registry: names, presets, parameter counts (shapes only), config round trips, errors."""

import functools

import flax.nnx as nnx
import jax
import pytest

from nl_jax import config_tree
from nl_jax.models import registry

BASELINES = ("titans", "transformer_pp")
NOMINAL = {"760m": 760e6, "1_3b": 1.3e9}


@functools.cache
def _count(name, preset):
  return registry.count_params(registry.model_config(name, preset))


def _available():
  names = []
  for name in registry.MODEL_NAMES:
    try:
      registry.config_class(name)
      names.append(name)
    except ValueError:  # nl_jax.models.hope not in this checkout
      pass
  return names


@pytest.mark.parametrize("name", BASELINES)
def test_every_preset_builds_abstractly_with_the_stated_size(name):
  assert set(registry.presets(name)) == set(registry.PRESET_NAMES)
  counts = {p: _count(name, p) for p in registry.PRESET_NAMES}
  for preset, nominal in NOMINAL.items():
    assert abs(counts[preset] / nominal - 1) < 0.05, (preset, counts[preset])
  assert 10e6 <= counts["small"] <= 20e6 * 1.05, counts["small"]
  assert counts["tiny"] < 1e6


@pytest.mark.parametrize("preset", [
    "small",  # the benchmark's equal-size comparison
    pytest.param("760m", marks=pytest.mark.slow),  # Hope's large presets take ~30 s to trace
    pytest.param("1_3b", marks=pytest.mark.slow),
])
def test_presets_are_size_matched_across_models(preset):
  names = _available()
  counts = {n: _count(n, preset) for n in names}
  ref = counts["transformer_pp"]
  for c in counts.values():
    assert abs(c / ref - 1) < 0.05, (preset, counts)


def test_count_params_matches_the_built_model():
  config = registry.model_config("transformer_pp", "tiny", n_layers=1, tie_embeddings=False)
  model = registry.build_model(config, rngs=nnx.Rngs(0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert registry.count_params(config) == n
  assert type(model).__name__ == "TransformerPP"
  d, v, f = config.d_model, config.vocab_size, config.mlp_hidden
  assert n == 2 * v * d + d + 4 * d * d + 3 * d * f + 2 * d  # the formula behind the presets


def test_match_params_finds_the_closest_width():
  target = _count("hope", "tiny")  # the tiny presets are not size-matched (148k vs 123k)
  for name in BASELINES:
    width = registry.match_params(name, "tiny", target)["mlp_hidden"]
    got = {w: registry.count_params(registry.model_config(name, "tiny", mlp_hidden=w))
           for w in (width - 1, width, width + 1)}
    assert abs(got[width] - target) <= min(abs(got[width - 1] - target),
                                           abs(got[width + 1] - target)), got
    assert abs(got[width] / target - 1) < 0.005, got
  # Overrides are kept, and a width already at the target is returned unchanged.
  config = registry.model_config("transformer_pp", "tiny", n_layers=1)
  assert registry.match_params("transformer_pp", "tiny", registry.count_params(config),
                               n_layers=1) == {"mlp_hidden": config.mlp_hidden}


def test_match_params_errors():
  with pytest.raises(ValueError, match="transformer_pp.rope_theta is not an int width"):
    registry.match_params("transformer_pp", "tiny", 10**5, field="rope_theta")
  with pytest.raises(ValueError, match="already has .* more than the target 10"):
    registry.match_params("transformer_pp", "tiny", 10)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown model 'gpt'.*transformer_pp"):
    registry.model_config("gpt")
  with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
    registry.model_config("transformer_pp", "huge")
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['d'\]"):
    registry.model_config("transformer_pp", "tiny", d=3)
  with pytest.raises(ValueError, match="dtype"):
    registry.model_config("transformer_pp", "tiny", dtype="float16")
  with pytest.raises(ValueError, match="not the config of a registered model"):
    registry.build_model(object(), rngs=nnx.Rngs(0))


def test_config_from_dict_round_trip_and_type_errors():
  for name in BASELINES:
    config = registry.model_config(name, "small", remat=True)
    assert registry.config_from_dict(name, config_tree.to_dict(config)) == config
  config = registry.config_from_dict("transformer_pp", {"sliding_window": 8, "norm_eps": 1})
  assert config.sliding_window == 8 and config.norm_eps == 1.0
  with pytest.raises(ValueError, match="TransformerPPConfig.d_model: expected int"):
    registry.config_from_dict("transformer_pp", {"d_model": "64"})
  with pytest.raises(ValueError, match="TitansConfig.titans.momentum: expected bool"):
    registry.config_from_dict("titans", {"titans": {"momentum": 1}})
  with pytest.raises(ValueError, match="sliding_window"):
    registry.config_from_dict("transformer_pp", {"sliding_window": 2.5})
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['foo'\]"):
    registry.config_from_dict("titans", {"foo": 1})


def _json(d):
  return {k: _json(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
          for k, v in d.items()}


def test_saved_config_without_value_norm_loads_as_trained():
  """A run saved before value_norm existed was trained with unnormalised v: loading it must
  not switch to today's default (l2), while a new config still gets the default."""
  saved = _json(config_tree.to_dict(registry.model_config("titans", "tiny")))
  del saved["titans"]["value_norm"]
  assert registry.config_from_saved("titans", saved).titans.value_norm == "none"
  assert registry.config_from_saved("titans", config_tree.merge(
      saved, {"titans.value_norm": "l2"})).titans.value_norm == "l2"
  assert registry.config_from_dict("titans", saved).titans.value_norm == "l2"
  saved = _json(config_tree.to_dict(registry.model_config("hope", "tiny")))
  del saved["smt"]["value_norm"]
  assert registry.config_from_saved("hope", saved).smt.value_norm == "none"
  assert registry.config_from_dict("hope", saved).smt_config().value_norm == "l2"


def _flat(config) -> dict:
  """A model config as runs saved it before the layer configs were nested (flat names)."""
  old_name = {new: old for old, new in type(config).RENAMED.items()}
  return _json({old_name.get(k, k): v for k, v in config_tree.flatten(
      config_tree.to_dict(config)).items()})


@pytest.mark.parametrize("name", ["hope", "hope_attention", "titans"])
def test_saved_flat_config_migrates_to_the_nested_one(name):
  """config.json of a run saved with the flat names (smt_chunk_size, cms_learning_rates,
  inner_rule, ...) loads as the same model: every flat name moves to its dotted place."""
  if name == "titans":
    config = registry.model_config(name, "tiny", titans=dict(memory_depth=1, chunk_size=8,
                                                             inner_rule="dgd"))
    flat = _flat(config)
    assert {"memory_depth", "chunk_size", "inner_rule"} <= set(flat) and "titans" not in flat
    assert registry.config_from_saved(name, flat) == config
    return
  config = registry.model_config(name, "tiny", profile="paper",
                                 cms=dict(learning_rates=(0.1, 0.0), variant="independent"),
                                 **({"smt": dict(chunk_size=4, alpha_min=0.3, rule="gd",
                                                 activation="gelu")} if name == "hope" else {}))
  flat = _flat(config)
  assert "cms_learning_rates" in flat and "cms" not in flat
  if name == "hope":
    assert {"smt_chunk_size", "alpha_min", "inner_rule", "memory_activation"} <= set(flat)
  assert registry.config_from_saved(name, flat) == config
  # A flat Hope saved before value_norm existed still loads with the value it was trained with.
  if name == "hope":
    del flat["value_norm"]
    assert registry.config_from_saved(name, flat).smt.value_norm == "none"


def test_nested_fields_round_trip_and_name_their_dotted_path():
  for name in ("hope", "hope_attention"):
    config = registry.model_config(name, "small", **{"cms.retention": (0.9, 0.8)})
    assert registry.config_from_dict(name, _json(config_tree.to_dict(config))) == config
  with pytest.raises(ValueError, match=r"smt: HopeConfig.smt.chunk_size: expected int, got str .8."):
    registry.config_from_dict("hope", {"smt": {"chunk_size": "8"}})
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['smt.d_model'\]"):
    registry.config_from_dict("hope", {"smt": {"d_model": 8}})
  # A layer config given whole may carry the widths only as the model sets them.
  from nl_jax.layers.self_modifying_titans import SelfModifyingTitansConfig  # noqa: PLC0415

  ok = registry.model_config("hope", "tiny", smt=SelfModifyingTitansConfig(
      d_model=64, n_heads=4, head_dim=16, chunk_size=8, proj_chunk_size=8))
  assert ok.smt.d_model is None and ok.smt_config().d_model == 64
  with pytest.raises(ValueError, match=r"HopeConfig.smt: \['d_model'\] are set from the model"):
    registry.model_config("hope", "tiny", smt=SelfModifyingTitansConfig(
        d_model=32, n_heads=4, head_dim=16, chunk_size=8, proj_chunk_size=8))


def test_titans_saved_before_the_gate_fields_loads_with_its_gate():
  """Titans runs saved before the gates' initial logits were fields were trained with
  alpha_bias_init 4; loading one must not switch to today's default (8)."""
  saved = _json(config_tree.to_dict(registry.model_config("titans", "tiny")))
  for f in ("eta_bias_init", "alpha_bias_init", "mu_bias_init"):
    del saved["titans"][f]
  old = registry.config_from_saved("titans", saved).titans
  assert (old.eta_bias_init, old.alpha_bias_init, old.mu_bias_init) == (-2.0, 4.0, 0.0)
  assert registry.model_config("titans", "tiny").titans.alpha_bias_init == 8.0
