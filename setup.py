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
"""nl_jax: Nested Learning (Hope, CMS, DGD, M3) in JAX/Flax."""

import setuptools

# Lower bounds are the versions the test suite was run with on CPU (Python 3.11).
CORE = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "ml-collections>=1.1.0",
    "chex>=0.1.92",
    "absl-py>=2.1.0",
    "numpy>=2.0",
]

EXTRAS = {
    "test": [
        "pytest>=8.0",
        "pytest-xdist>=3.5",
        "sentencepiece>=0.2.0",
        "nbmake>=1.5.5",
        "ipykernel>=6.0",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "google-crc32c>=1.5",
    ],
    "tokenizers": ["sentencepiece>=0.2.0"],
    # TensorBoard event files and text samples (tensorboardX, no TensorFlow), the viewer
    # itself (`tensorboard --logdir`), loss.png (matplotlib).
    "monitoring": ["tensorboardX>=2.6", "google-crc32c>=1.5", "tensorboard>=2.15",
                   "matplotlib>=3.8"],
    # Paper-scale sources: Parquet (pyarrow), TFRecord writing (google-crc32c).
    "data": ["pyarrow>=14.0", "google-crc32c>=1.5"],
    # TensorFlow stack (~2.4 GB); only nl_jax.data.seqio_adapter imports it, lazily.
    "seqio": ["seqio>=0.0.20"],
    # The notebook: run it (ipykernel, nbmake), render it (`jupyter nbconvert`), its plots.
    "notebooks": ["ipykernel>=6.0", "nbmake>=1.5.5", "nbconvert>=7.0", "matplotlib>=3.8"],
}

setuptools.setup(
    name="nl_jax",
    version="0.1.0",
    description="Nested Learning (Hope, CMS, DGD, M3) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["nl_jax", "nl_jax.*", "pallas_kernels", "pallas_kernels.*"]),
    package_data={"nl_jax": ["data/corpus/*"]},
    install_requires=CORE,
    extras_require=EXTRAS,
)
