"""Flax linen encoders (resnet.py: ``ResNet``) and heads (heads.py: ``MLPHead``, ``Prototypes``)."""

from ssl_jax.models.heads import (MLPHead, Prototypes, byol_predictor, byol_projector,
                                  normalize_prototypes, simclr_v1_projector,
                                  simclr_v2_projector)
from ssl_jax.models.resnet import ResNet, num_features

__all__ = [
    'MLPHead', 'Prototypes', 'ResNet', 'byol_predictor', 'byol_projector', 'normalize_prototypes',
    'num_features', 'simclr_v1_projector', 'simclr_v2_projector',
]
