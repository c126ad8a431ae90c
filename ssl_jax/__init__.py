"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

Pure functions over explicit pytrees, compiled with ``jax.jit`` over
``jax.shard_map`` on a 1-D device mesh. See DESIGN.md for the map.
"""

__version__ = "0.1.0"


def load_encoder(workdir_or_checkpoint):
  """``(apply_fn, params)`` of a trained backbone; see ``ssl_jax.encoder``."""
  from ssl_jax.encoder import load_encoder as _load  # pylint: disable=g-import-not-at-top
  return _load(workdir_or_checkpoint)
