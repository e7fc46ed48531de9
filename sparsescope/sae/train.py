"""Train an SAE with sae-lens on cached activations; save it in sae-lens's format plus our manifest.

sae-lens supplies the architectures and the training loop (``SAETrainer`` fed by our data provider); this module
picks the architecture, sizes the run, and writes ``cfg.json`` + ``sae_weights.safetensors`` (so
``sae_lens.SAE.load_from_disk`` opens the folder) next to ``sparsescope.json`` (model revision, site, data, seed,
training figures), so a checkpoint says where it came from and the run can be repeated.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from sparsescope.errors import UserError

MANIFEST = "sparsescope.json"
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")


@dataclass
class SAETrainConfig:
    """How to train one SAE (defaults: a TopK SAE that converges on SmolLM2 within ~15 min on 2 CPU cores)."""

    site: str = "blocks.6.mlp.hook_post"  # the site whose activations the SAE reconstructs
    architecture: str = "topk"  # topk | batchtopk | jumprelu | standard (sae-lens training classes)
    d_sae: int = 4096  # number of features (dictionary width)
    k: int = 64  # topk: active features per token; batchtopk: per token on average; jumprelu: target L0
    sparsity_coefficient: float | None = None  # jumprelu L0 / standard L1 coefficient (None: 1.0 / 5.0, untuned)
    train_tokens: int = 600_000  # samples the trainer sees (the cache is reused in shuffled passes)
    batch_size: int = 512  # samples per optimiser step
    lr: float = 5e-4  # Adam learning rate: 50 warm-up steps, constant, linear decay to 0 over the last 20 % of steps
    buffer_tokens: int = 32768  # shuffle-buffer rows held in memory (× d_in × 4 bytes)
    seed: int = 0  # seeds the SAE initialisation and the shuffling
    max_minutes: float | None = None  # stop training after this wall time even if train_tokens are not reached

    def check(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise UserError(f"unknown SAE architecture {self.architecture!r}; choose from {', '.join(ARCHITECTURES)}")
        for name in ("d_sae", "k", "train_tokens", "batch_size", "buffer_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.k > self.d_sae:
            raise UserError(f"k={self.k} exceeds the SAE width d_sae={self.d_sae}; lower --k or raise --d-sae")
        if self.train_tokens < self.batch_size:
            raise UserError(f"train_tokens={self.train_tokens} is less than one batch of {self.batch_size}; "
                            "raise --train-tokens")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise UserError(f"max_minutes must be positive, got {self.max_minutes}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")


def _sae_lens():
    """Import sae-lens without its import-time deprecation notice from TransformerLens (not ours to fix)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sae_lens
    return sae_lens


def training_sae(cfg: SAETrainConfig, d_in: int, metadata: dict):
    """The sae-lens training SAE for ``cfg`` (inputs scaled to E‖x‖ = √d_in during training, folded back after)."""
    _sae_lens()
    from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUTrainingSAE,
                          JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE,
                          TopKTrainingSAEConfig)
    from sae_lens.saes.sae import SAEMetadata

    common = dict(d_in=d_in, d_sae=cfg.d_sae, device="cpu", dtype="float32",
                  normalize_activations="expected_average_only_in", metadata=SAEMetadata(**metadata))
    if cfg.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, **common))
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=float(cfg.k), **common))
    if cfg.architecture == "jumprelu":
        coef = 1.0 if cfg.sparsity_coefficient is None else cfg.sparsity_coefficient
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            jumprelu_sparsity_loss_mode="quadratic", target_l0=float(cfg.k), l0_coefficient=coef, **common))
    coef = 5.0 if cfg.sparsity_coefficient is None else cfg.sparsity_coefficient
    return StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=coef, **common))


@dataclass
class TrainResult:
    """The trained (inference) SAE, its checkpoint folder, the loss curve and throughput."""

    sae: object
    path: Path
    curve: pd.DataFrame
    seconds: float
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def train(data, d_in: int, cfg: SAETrainConfig, path: Path | str, manifest: dict,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train on ``data`` (an iterator of ``[batch, d_in]`` float tensors) and save to ``path`` (written under a
    temporary name, renamed when complete). ``manifest`` (model, revision, data...) is stored with the config."""
    _sae_lens()
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    cfg.check()
    torch.manual_seed(cfg.seed)
    sae = training_sae(cfg, d_in, {"model_name": manifest.get("model"), "hook_name": cfg.site,
                                   "context_size": manifest.get("data", {}).get("context"), "prepend_bos": False})
    steps = cfg.train_tokens // cfg.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=cfg.lr / 10, lr_scheduler_name="constant", lr_decay_steps=steps // 5,
        lr_warm_up_steps=min(50, steps // 10),
        device="cpu", logger=LoggingConfig(log_to_wandb=False), dead_feature_window=max(50, steps // 10),
        feature_sampling_window=max(100, steps // 5), n_batches_for_norm_estimate=min(50, steps))
    trainer = _trainer_class()(cfg=trainer_cfg, sae=sae, data_provider=data)
    trainer.progress = progress
    trainer.deadline = None if cfg.max_minutes is None else time.perf_counter() + 60 * cfg.max_minutes
    t0, cpu0 = time.perf_counter(), time.process_time()
    with _quiet_tqdm() if progress else contextlib.nullcontext():
        trained = trainer.fit()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trained.save_inference_model(tmp)
    full = dict(manifest, site=cfg.site, d_in=d_in, train=asdict(cfg), tokens_trained=trainer.n_training_samples,
                train_seconds=round(seconds, 2), tokens_per_s=round(trainer.n_training_samples / seconds, 1),
                cpu_seconds=round(cpu_seconds, 2), load_average=list(os.getloadavg()),
                dead_features_at_end=int(trainer.dead_neurons.sum()))
    (tmp / MANIFEST).write_text(json.dumps(full, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    sae, _ = load_sae(path)
    return TrainResult(sae, path, pd.DataFrame(trainer.curve), seconds, trainer.n_training_samples)


@contextlib.contextmanager
def _quiet_tqdm():
    """Silence sae-lens's own tqdm bars while ours runs (tqdm reads TQDM_DISABLE only when it is imported)."""
    from unittest import mock

    from sae_lens.training import activation_scaler, sae_trainer
    from tqdm.auto import tqdm

    quiet = functools.partial(tqdm, disable=True)
    with mock.patch.object(sae_trainer, "tqdm", quiet), mock.patch.object(activation_scaler, "tqdm", quiet):
        yield


def _trainer_class():
    """Built on first use so importing this module does not import sae-lens."""
    SAETrainer = _sae_lens().SAETrainer

    class Trainer(SAETrainer):
        """sae-lens's trainer with the loss curve kept, progress reported (it only logs to wandb itself) and an
        optional wall-time budget (the learning-rate schedule then ends early, without its final decay)."""

        progress: Callable[[int], None] | None = None
        deadline: float | None = None
        curve: list

        def _update_pbar(self, step_output, pbar, update_interval: int = 100):
            if not hasattr(self, "curve"):
                self.curve = []
            if self.n_training_steps % 20 == 0:
                x, x_hat = step_output.sae_in.detach().float(), step_output.sae_out.detach().float()
                var = (x - x.mean(0)).pow(2).sum()
                self.curve.append(dict(step=self.n_training_steps, tokens=self.n_training_samples,
                                       loss=float(step_output.loss.detach()),
                                       mse=float((x - x_hat).pow(2).sum(-1).mean()),
                                       explained_variance=float(1 - (x - x_hat).pow(2).sum() / var),
                                       l0=float((step_output.feature_acts > 0).float().sum(-1).mean()),
                                       lr=self.optimizer.param_groups[0]["lr"]))
            if self.progress:
                self.progress(self.n_training_samples)
            if self.deadline is not None and time.perf_counter() > self.deadline:
                self.cfg.total_training_samples = self.n_training_samples  # fit() stops after this step

    return Trainer


def load_sae(path: Path | str):
    """``(SAE, manifest)`` from a checkpoint folder; a missing or damaged folder is one UserError."""
    SAE = _sae_lens().SAE

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"SAE checkpoint folder {path} not found; pass a run id or a folder holding cfg.json")
    missing = [f for f in ("cfg.json", "sae_weights.safetensors") if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path} is not an SAE checkpoint ({', '.join(missing)} missing); "
                        "pass the sae/ folder of a `sparsescope sae train` run")
    try:
        sae = SAE.load_from_disk(path, device="cpu")
    except Exception as e:  # sae-lens raises many kinds on damaged files  # noqa: BLE001
        raise UserError(f"SAE checkpoint {path} is corrupt ({type(e).__name__}: {str(e)[:120]}); "
                        "train it again with `sparsescope sae train`") from None
    manifest = {}
    if (path / MANIFEST).is_file():
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except ValueError:
            raise UserError(f"{path / MANIFEST} is corrupt; train the SAE again") from None
    sae.eval()
    return sae, manifest
