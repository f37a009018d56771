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
"""Language models with one interface (see nl_jax.models.registry).

Import-light on purpose: the model modules are loaded by the registry when first used.
"""

from nl_jax.models.registry import (
    MODEL_NAMES,
    build_model,
    config_from_dict,
    config_from_saved,
    count_params,
    match_params,
    migrate_saved,
    model_config,
)

__all__ = ["MODEL_NAMES", "build_model", "config_from_dict", "config_from_saved", "count_params",
           "match_params", "migrate_saved", "model_config"]
