"""Protocol settings (data, per the STYLE rule "configs are data"), with their sources.

The CLI exposes every field as ``--eval.<section>.<field>=value``; the
functions take the same ConfigDict.
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Defaults of every protocol, sized for a CPU; the papers' values are cited."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 256           # eval / training batch of the protocols (global)

  # Weighted kNN (Wu et al. 2018, Sec. 3.4; k=200, T=0.07 as in DINO and
  # solo-learn; k=20 as in Wu et al.'s Table 1).
  c.knn = ml_collections.ConfigDict(dict(k=(20, 200), temperature=0.07))

  c.linear = ml_collections.ConfigDict()
  # 'lbfgs': multinomial logistic regression on standardised centre-crop
  # features (SimCLR appendix B.6 / Kornblith et al. 2019 transfer protocol:
  # L-BFGS, L2 regularisation chosen on a held-out part of train, then refit);
  # 'sgd': the standard augmented protocol (random-resized crop + flip, centre
  # crop at test; SGD + Nesterov momentum, cosine, MoCo/SimCLR linear eval)
  # with one head per learning rate trained together; 'auto': lbfgs when the
  # train split has at most ``lbfgs_max_examples`` images.
  c.linear.solver = "auto"
  c.linear.lbfgs_max_examples = 60_000
  c.linear.inverse_l2 = (0.01, 0.1, 1.0, 10.0)   # sklearn's C grid
  c.linear.max_iter = 1000
  c.linear.val_fraction = 0.1                    # held out of train to choose C / lr
  c.linear.learning_rates = (0.03, 0.1, 0.3, 1.0)  # x batch/256 (SimCLR: 0.1 x B/256)
  c.linear.epochs = 10                           # papers: 90 (SimCLR) / 100 (MoCo)
  c.linear.momentum = 0.9
  c.linear.crop_scale = (0.08, 1.0)              # torchvision RandomResizedCrop default

  # Fine-tuning of the whole network (SimCLR appendix B.5: Nesterov momentum
  # 0.9, lr 0.05 x B/256, no weight decay, no warm-up, crop + flip only;
  # 60 epochs on 1%, 30 on 10% of ImageNet). Cosine decay here. Before testing,
  # the BN statistics are recomputed on this many train batches with the final
  # weights (precise BN, Wu & Johnson 2021; 0: keep the running averages).
  c.finetune = ml_collections.ConfigDict(dict(
      learning_rate=0.05, epochs=5, momentum=0.9, weight_decay=0.0,
      crop_scale=(0.08, 1.0), precise_bn_batches=10))

  # Semi-supervised: class-balanced labelled subsets (SimCLR Sec. 6 / B.5:
  # 1% and 10% of the train split, about 12.8 / 128 images per ImageNet class;
  # fine-tuned for 60 and 30 epochs, the finetune section's other settings).
  c.semisup = ml_collections.ConfigDict(dict(fractions=(0.01, 0.1), epochs=(60, 30)))

  # Transfer: the frozen-feature protocols run on the eval dataset.
  c.transfer = ml_collections.ConfigDict(dict(protocols=("knn", "linear")))
  return c
