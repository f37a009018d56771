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
"""Evaluation harness: seeded task generators, scorers and model adapters (byte tokens).

Tasks (each module: a config dataclass, ``make_example(s)``):

* `niah`: RULER-style S-NIAH-1/2/3 (pass-key, number, UUID needles) and MK-NIAH-1.
* `mqar`: multi-query associative recall (Zoology).
* `formal`: Table 5's formal languages as classification by class logit (bin0 / bin1).
* `babilong`: bAbI qa1 / qa2 facts hidden in held-out corpus text.
* `continual`: languages learnt in context one after another; accuracy matrix, forgetting.
* `perplexity`: held-out loss by context position (Fig. 10) and the "read twice" test.

`examples.score(logits_fn, examples)` scores any model through a ``logits_fn``;
`runner.make_logits_fn(model, segment_len=...)` builds one from an nl_jax model (memory
state carried across segments). `suite` and ``python -m nl_jax.eval`` run named suites;
`fit` and `experiment` are the training loop and plumbing of the ``experiments/`` scripts.
"""

from nl_jax.eval import babilong, continual, examples, formal, mqar, niah, perplexity, suite
from nl_jax.eval.examples import Example, Span, make_batch, score

__all__ = [
    "babilong",
    "continual",
    "examples",
    "formal",
    "mqar",
    "niah",
    "perplexity",
    "suite",
    "Example",
    "Span",
    "make_batch",
    "score",
]
