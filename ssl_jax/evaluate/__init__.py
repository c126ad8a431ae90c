"""Evaluation of pre-trained backbones; every number names its protocol.

Protocols (``python -m ssl_jax.evaluate --workdir=DIR --protocol=NAME``, or the
functions below), each writing ``DIR/eval/<protocol>_<dataset>.json`` and a
row of ``DIR/eval/results.md``:

- ``knn``: weighted kNN (Wu et al. 2018), k=20 and k=200, T=0.07 (``knn.py``).
- ``linear``: frozen backbone, L-BFGS logistic regression on features or the
  augmented SGD protocol; top-1/top-5 (``linear.py``).
- ``finetune``: the whole network with its own schedule (``finetune.py``).
- ``semisup``: fine-tuning on 1% / 10% class-balanced subsets (``finetune.py``).
- ``transfer``: the frozen-feature protocols on another dataset (``__main__``).

``make_feature_fn`` / ``knn_accuracy`` are also the trainer's kNN monitor;
``plots.feature_map`` draws the 2-D map of the features.
"""

from ssl_jax.evaluate.config import default_config
from ssl_jax.evaluate.features import extract_features
from ssl_jax.evaluate.features import load_checkpoint
from ssl_jax.evaluate.features import make_feature_fn
from ssl_jax.evaluate.features import setup
from ssl_jax.evaluate.finetune import finetune_protocol
from ssl_jax.evaluate.finetune import semisup_protocol
from ssl_jax.evaluate.knn import knn_accuracy
from ssl_jax.evaluate.knn import knn_predict
from ssl_jax.evaluate.knn import knn_protocol
from ssl_jax.evaluate.linear import linear_protocol
from ssl_jax.evaluate.transfer import transfer_protocol

PROTOCOLS = {
    "knn": knn_protocol,
    "linear": linear_protocol,
    "finetune": finetune_protocol,
    "semisup": semisup_protocol,
    "transfer": transfer_protocol,
}

__all__ = [
    "PROTOCOLS",
    "default_config",
    "extract_features",
    "finetune_protocol",
    "knn_accuracy",
    "knn_predict",
    "knn_protocol",
    "linear_protocol",
    "load_checkpoint",
    "make_feature_fn",
    "semisup_protocol",
    "setup",
    "transfer_protocol",
]
