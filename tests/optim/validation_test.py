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
"""Bad hyperparameters raise a ValueError naming the parameter at construction."""

import pytest

from nl_jax import optim

CASES = [
    (lambda: optim.m3(-0.1), "learning_rate"),
    (lambda: optim.m3(0.1, f=0), "f"),
    (lambda: optim.m3(0.1, b1=1.0), "b1"),
    (lambda: optim.m3(0.1, b2=-0.1), "b2"),
    (lambda: optim.m3(0.1, b3=1.5), "b3"),
    (lambda: optim.m3(0.1, eps=0.0), "eps"),
    (lambda: optim.m3(0.1, ns_steps=0), "ns_steps"),
    (lambda: optim.m3(0.1, accumulator="adam"), "accumulator"),
    (lambda: optim.m3(0.1, denominator_guard="max"), "denominator_guard"),
    (lambda: optim.m3(0.1, alpha=-1.0), "alpha"),
    (lambda: optim.m3(0.1, ns_coeffs="nope"), "ns_coeffs"),
    (lambda: optim.m3(0.1, implementation="cuda"), "implementation"),
    (lambda: optim.m3(0.1, weight_decay=-1.0), "weight_decay"),
    (lambda: optim.scale_by_m3(f=2.5), "f"),
    (lambda: optim.m3(0.1, accumulator="sum", nesterov=True), "nesterov"),
    (lambda: optim.dgd(-1.0), "learning_rate"),
    (lambda: optim.dgd(0.1, decay=-1.0), "decay"),
    (lambda: optim.delta_momentum(-0.1), "learning_rate"),
    (lambda: optim.delta_momentum(0.1, alpha=1.0), "alpha"),
    (lambda: optim.delta_momentum(0.1, beta=1.5), "beta"),
    (lambda: optim.delta_momentum(0.1, eps=0.0), "eps"),
    (lambda: optim.deep_momentum(-0.1), "learning_rate"),
    (lambda: optim.deep_momentum(0.1, beta=1.0), "beta"),
    (lambda: optim.deep_momentum(0.1, hidden=0), "hidden"),
    (lambda: optim.deep_momentum(0.1, inner_lr=-1.0), "inner_lr"),
    (lambda: optim.deep_momentum(0.1, eps=-1e-8), "eps"),
    (lambda: optim.orthogonalize(__import__("jax").numpy.ones((2, 2)), ns_steps=0), "ns_steps"),
]


@pytest.mark.parametrize("build,name", CASES, ids=[c[1] + str(i) for i, c in enumerate(CASES)])
def test_bad_hyperparameter_raises(build, name):
  with pytest.raises(ValueError, match=name):
    build()


def test_valid_edge_values_accepted():
  optim.m3(0.0, b1=0.0, b2=0.0, b3=0.0, alpha=0.0, f=1, ns_steps=1)
  optim.dgd(0.0, decay=0.0)
  optim.delta_momentum(0.0, alpha=0.0, beta=1.0)
  optim.deep_momentum(0.0, beta=0.0, inner_lr=0.0, memory_decay=1.0, hidden=1)
