r"""The reproduction table: every method x seeds at a stated CPU budget, then kNN + linear.

Each (method, dataset, seed) pre-trains with the method's own config
(``configs/<method>.py:<dataset>``) cut to ``--total_steps`` steps, then runs
the ``knn`` (weighted, k=20/200, T=0.07) and ``linear`` (L-BFGS logistic
regression on standardised centre-crop features, C chosen on 10% of train)
protocols of ``ssl_jax.evaluate``. The Markdown table gives mean +- std over
the seeds per protocol, the budget, the hardware and the wall time, next to
solo-learn's published CIFAR-10 numbers (ResNet-18, 1000 epochs, linear).

Methods are discovered from ``ssl_jax.methods._METHODS`` (those with a
``configs/<method>.py``). Datasets: ``digits`` (offline MNIST-5k) and, with
``--cifar10_folder`` (or ``auto``: ``../shared/data/cifar10-jpeg.tar.gz``
unpacked into the output directory), CIFAR-10 as an image folder.

  python benchmarks/reproduce.py --dry_run
  python benchmarks/reproduce.py --methods=simclr --seeds=0,1 --total_steps=60
  python benchmarks/reproduce.py --cifar10_folder=auto --datasets=digits,cifar10
"""

from __future__ import annotations

import os

from ssl_jax import cpu_devices  # noqa: E402  (before JAX is imported)

cpu_devices.configure()

import json  # noqa: E402
import platform  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from ssl_jax import config_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CIFAR10 = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")

# solo-learn README, CIFAR-10, ResNet-18, 1000 epochs, linear top-1 (online
# linear head; MoCo V2+ for mocov2). Keys are our method names; others print "-".
SOLO_LEARN_CIFAR10 = {
    "barlow_twins": 92.10, "byol": 92.58, "deepclusterv2": 88.85, "dino": 89.52,
    "mocov2": 92.94, "mocov3": 93.10, "nnclr": 91.88, "simclr": 90.74,
    "simsiam": 90.51, "swav": 89.17, "vicreg": 92.07,
}

_METHODS = flags.DEFINE_list("methods", None, "Methods (default: every available one).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Pre-training / protocol seeds.")
_DATASETS = flags.DEFINE_list("datasets", ["digits"], "digits and/or cifar10.")
_CIFAR10 = flags.DEFINE_string(
    "cifar10_folder", "", "CIFAR-10 image folder (train/, test/); 'auto': unpack "
    "../shared/data/cifar10-jpeg.tar.gz into --out.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).")
_STEPS = flags.DEFINE_integer("total_steps", 300, "Pre-training steps per run (the budget).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch (0: the config's).")
_WIDTH = flags.DEFINE_integer("base_width", 0, "ResNet base width (0: the config's).")
_OUT = flags.DEFINE_string("out", "/tmp/ssl_jax_reproduce", "Workdirs and results go here.")
_DRY = flags.DEFINE_boolean("dry_run", False, "Print the plan and exit.")
_PROTOCOLS = flags.DEFINE_list(
    "protocols", ["knn", "linear"], "Evaluation protocols per run: knn (seconds) and/or "
    "linear (L-BFGS; minutes per run on 2 CPU cores for CIFAR-10's 50,000 features).")
_BASELINE = flags.DEFINE_boolean(
    "random_init", True, "Also evaluate a randomly initialised encoder (the 'random init' "
    "row: SimCLR's config, no pre-training), the floor every method must clear.")


def available_methods() -> list[str]:
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top
  return [m for m in methods._METHODS  # pylint: disable=protected-access
          if os.path.exists(os.path.join(REPO, "configs", f"{m}.py"))]


def load_config(method: str, variant: str):
  return config_lib.load_module(os.path.join(REPO, "configs", f"{method}.py")).get_config(variant)


def cifar10_folder() -> str:
  path = _CIFAR10.value
  if path != "auto":
    return path
  target = os.path.join(_OUT.value, "cifar10_folder")
  if not os.path.isdir(os.path.join(target, "train")):
    if not os.path.exists(SHARED_CIFAR10):
      raise FileNotFoundError(f"--cifar10_folder=auto needs {SHARED_CIFAR10}.")
    os.makedirs(target, exist_ok=True)
    with tarfile.open(SHARED_CIFAR10) as tar:
      tar.extractall(target, filter="data")
  return target


def run_config(method: str, dataset: str, seed: int):
  """The method's config for ``dataset`` at the budget of the flags."""
  variant = "image_folder" if dataset == "cifar10" else dataset
  config = load_config(method, variant)
  config.seed = seed
  config.total_steps = _STEPS.value
  config.knn.every_epochs = 0.0          # the protocols evaluate at the end
  config.checkpoint_every_steps = _STEPS.value
  if _BATCH.value:
    config.batch_size = _BATCH.value
  if _WIDTH.value:
    config.model.base_width = _WIDTH.value
  if _DATA_DIR.value:
    config.data.data_dir = _DATA_DIR.value
  if dataset == "cifar10":
    config.data.folder = cifar10_folder()
  from ssl_jax import data  # pylint: disable=g-import-not-at-top
  info = data.dataset_info(config.data)
  fit_schedule_to_budget(config, _STEPS.value * config.batch_size / info.train_size)
  return config


def fit_schedule_to_budget(config, budget_epochs: float) -> None:
  """Compresses the config's epoch-based schedule into ``budget_epochs``.

  The paper schedules are in epochs of a run of ``config.total_epochs``; at a
  CPU budget of one or two epochs, warm-up (10 of 1000 epochs), the SwAV
  prototype freeze and queue start keep their *share* of the run. BYOL's
  target momentum starts at 0.99 (DeepMind's preset for runs of <= 300 epochs)
  when the paper's 0.996 would leave the target nearly fixed over the budget.
  """
  share = min(1.0, budget_epochs / config.total_epochs)
  config.optim.warmup_epochs *= share
  if "frozen_epochs" in config.optim:
    config.optim.frozen_epochs *= share
  if "swav" in config:
    config.swav.queue_start_epoch *= share
  if "byol" in config:
    config.byol.tau_base = min(config.byol.tau_base, 0.99)


def save_random_init(config, workdir: str) -> None:
  """A step-0 checkpoint of ``config``'s freshly initialised state, for the protocols."""
  from ssl_jax import checkpoint, methods, optim, train  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config.method)
  tx, _ = optim.make_optimizer(config.optim, total_steps=config.total_steps,
                               steps_per_epoch=config.total_steps,
                               batch_size=config.batch_size)
  state = train.create_train_state(config, method, tx, train.run_mesh(config, method))
  manager = checkpoint.make_manager(workdir, max_to_keep=1)
  checkpoint.save(manager, 0, state, train._meta(config, 0))  # pylint: disable=protected-access
  checkpoint.wait_until_finished(manager)


def _config_name(method: str) -> str:
  return "simclr" if method == "random init" else method


def describe(config) -> str:
  m = config.model
  return (f"ResNet-{m.depth} width {m.base_width}, {config.augment.size}px, batch "
          f"{config.batch_size}, {config.total_steps} steps, paper schedule compressed")


def _mean_std(values) -> str:
  values = 100 * np.asarray(values, np.float64)
  done = values[~np.isnan(values)]  # NaN: the protocol was not run for that seed
  if not len(done):
    return "-"
  partial = "" if len(done) == len(values) else f" ({len(done)} of {len(values)} seeds)"
  if len(done) == 1:
    return f"{done[0]:.2f}{partial}"
  return f"{done.mean():.2f} ± {done.std(ddof=1):.2f}{partial}"


def _images_per_sec(row: dict) -> str:
  if not row["images"] or not np.mean(row["train_s"]):
    return "-"
  return f"{row['images'] / np.mean(row['train_s']):.0f}"


def table(rows: list[dict], seeds: int) -> str:
  header = ("| method | dataset | budget | kNN top-1 k=20 | kNN top-1 k=200 | linear top-1 "
            "(L-BFGS) | linear top-5 | pre-train min/run | images/s | solo-learn CIFAR-10 "
            "linear |\n|---|---|---|---|---|---|---|---|---|---|\n")
  lines = []
  for r in rows:
    lines.append(
        f"| {r['method']} | {r['dataset']} | {r['budget']} | {_mean_std(r['knn20'])} | "
        f"{_mean_std(r['knn200'])} | {_mean_std(r['linear1'])} | {_mean_std(r['linear5'])} | "
        f"{np.mean(r['train_s']) / 60:.1f} | {_images_per_sec(r)} | "
        f"{SOLO_LEARN_CIFAR10.get(r['method'], '-')} |")
  return (header + "\n".join(lines) +
          f"\n\nmean ± std over {seeds} seeds (protocol seed = pre-training seed); "
          "protocols: weighted kNN (Wu et al. 2018, T=0.07) on l2-normalised centre-crop "
          "features; linear = L-BFGS multinomial logistic regression on standardised "
          "features, C from {0.01, 0.1, 1, 10} on 10% of train. solo-learn: ResNet-18, "
          "1000 epochs, batch 256, full CIFAR-10 on GPUs (not this budget).\n")


RUN_RECORD = "reproduce_run.json"


def run_once(method: str, config, workdir: str, seed: int, evaluate) -> dict | None:
  """Pre-trains and evaluates one (method, seed), or reuses the record of a finished one.

  The record (``workdir/reproduce_run.json``) is written once both the checkpoint
  and the requested protocols are done, so an interrupted table resumes: a
  finished run is read back, a half-trained one resumes from its checkpoint,
  and a protocol missing from an older record (e.g. ``linear`` after a
  ``--protocols=knn`` pass) is run on the existing checkpoint. A record from
  another budget is refused rather than mixed into the table.
  """
  from ssl_jax import metrics_io, train  # pylint: disable=g-import-not-at-top
  budget = describe(config)
  path = os.path.join(workdir, RUN_RECORD)
  record = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    if record.get("budget") != budget or record.get("seed") != seed:
      raise ValueError(
          f"{path} is from another run ({record.get('budget')!r}, seed {record.get('seed')}), "
          f"not {budget!r}, seed {seed}: pass a fresh --out or delete {workdir}.")
  if record is None:
    if method == "random init":
      save_random_init(config, workdir)
    elif train.train_and_evaluate(config, workdir)["preempted"]:
      return None
    record = {"method": method, "seed": seed, "budget": budget,
              "train_s": metrics_io.training_seconds(workdir), "knn20": float("nan"),
              "knn200": float("nan"), "linear1": float("nan"), "linear5": float("nan")}
  eval_config = evaluate.default_config()
  eval_config.seed = seed
  eval_config.linear.solver = "lbfgs"
  if "knn" in _PROTOCOLS.value and np.isnan(record["knn20"]):
    knn = evaluate.knn_protocol(workdir, eval_config)["metrics"]
    record.update(knn20=knn["top1_k20"], knn200=knn["top1_k200"])
  if "linear" in _PROTOCOLS.value and np.isnan(record["linear1"]):
    lin = evaluate.linear_protocol(workdir, eval_config)["metrics"]
    record.update(linear1=lin["top1"], linear5=lin["top5"])
  from ssl_jax import files  # pylint: disable=g-import-not-at-top
  files.write_text(path, json.dumps(record, indent=2))
  return record


def main(argv):
  del argv
  methods = available_methods() if _METHODS.value is None else _METHODS.value
  seeds = [int(s) for s in _SEEDS.value]
  datasets = _DATASETS.value
  import jax  # pylint: disable=g-import-not-at-top
  hardware = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{jax.device_count()} XLA {jax.devices()[0].platform} devices")
  plan = []
  for dataset in datasets:
    if _BASELINE.value:
      for seed in seeds:
        plan.append(("random init", dataset, seed,
                     os.path.join(_OUT.value, f"random_init_{dataset}_s{seed}")))
    for method in methods:
      for seed in seeds:
        workdir = os.path.join(_OUT.value, f"{method}_{dataset}_s{seed}")
        plan.append((method, dataset, seed, workdir))
  print(f"# Reproduction plan: {len(methods)} methods x {len(datasets)} datasets x "
        f"{len(seeds)} seeds = {len(plan)} runs; {_STEPS.value} pre-training steps each; "
        f"{hardware}")
  for method, dataset, seed, workdir in plan:
    budget = "(cifar10 folder needed)" if dataset == "cifar10" and not _CIFAR10.value else \
        describe(run_config(_config_name(method), dataset, seed))
    print(f"- {method} on {dataset}, seed {seed}: {budget} -> {workdir}; then knn + linear")
  if _DRY.value:
    return

  from ssl_jax import evaluate  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  grouped: dict[tuple[str, str], dict] = {}
  for method, dataset, seed, workdir in plan:
    config = run_config(_config_name(method), dataset, seed)
    record = run_once(method, config, workdir, seed, evaluate)
    if record is None:
      # SIGTERM: the run saved a checkpoint; rerunning the same command resumes it.
      print(f"Preempted during {method} on {dataset}, seed {seed}; rerun to resume.")
      return
    row = grouped.setdefault((method, dataset), {
        "method": method, "dataset": dataset, "knn20": [],
        "budget": describe(config) if method != "random init" else "no pre-training",
        "knn200": [], "linear1": [], "linear5": [], "train_s": [],
        "images": 0 if method == "random init" else config.total_steps * config.batch_size})
    for key in ("knn20", "knn200", "linear1", "linear5", "train_s"):
      row[key].append(record[key])
    print(f"done {method} {dataset} seed {seed}: kNN20 {record['knn20']:.4f} linear "
          f"{record['linear1']:.4f} ({record['train_s']:.0f} s pre-training)", flush=True)
  wall = time.perf_counter() - start
  md = table(list(grouped.values()), len(seeds))
  pretrain_min = sum(sum(r["train_s"]) for r in grouped.values()) / 60
  md += (f"Hardware: {hardware}. Pre-training time summed over the runs: {pretrain_min:.1f} "
         f"min; this invocation's wall time (evaluation included, finished runs read "
         f"back): {wall / 60:.1f} min.\n")
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "reproduce.md"), "w", encoding="utf-8") as f:
    f.write(md)
  with open(os.path.join(_OUT.value, "reproduce.json"), "w", encoding="utf-8") as f:
    json.dump(list(grouped.values()), f, indent=2)
  print(md)


if __name__ == "__main__":
  app.run(main)
