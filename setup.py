"""ssl_jax: self-supervised visual representation learning in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="ssl_jax",
    version="0.1.0",
    description="Self-supervised visual representation learning in JAX/Flax",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ssl_jax", "ssl_jax.*"]),
    python_requires=">=3.11",
    install_requires=requirements,
    extras_require={"test": ["pytest", "pytest-xdist"], "tpu": ["jax[tpu]"]},
)
