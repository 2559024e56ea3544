"""One LightningModule and one LightningDataModule for every task, and ``train``."""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning as L
import torch
from torch import nn

from .artifact import base_checksum, save_artifact
from .averaging import TrainableEMA
from .backbone import Backbone, Pooling, lora_config
from .config import DataConfig, LoraSettings, TrainerSettings
from .data import (DataError, LengthGroupedBatches, Rows, choose_max_length, collate, encode_targets, load_rows,
                   tokenize)
from .lexical import Lexical, check_blendable, choose_weight, fit_lexical, joined
from .models import resolve
from .predictor import predict_logits
from .task import Task, build_task, task_state

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One tokenized split: token ids, targets and the row texts (text fields joined), row-aligned."""

    ids: list[list[int]]
    targets: list[Any]
    texts: list[str] = dataclasses.field(default_factory=list)

    def batch(self, index: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        out = collate([self.ids[i] for i in index], pad_id)
        out["targets"] = torch.tensor([self.targets[i] for i in index])
        return out


@dataclass
class Prepared:
    train: Split
    valid: Split
    test: Split | None
    rest: Split | None  # training-file rows left out by data.max_train_examples
    max_length: int
    stats: dict[str, Any]


def _partition(rows: Rows, held_out: int, seed: int) -> tuple[Rows, Rows]:
    """(kept, held out): ``held_out`` rows drawn with ``seed``, both parts in file order."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return rows.subset(sorted(order[held_out:])), rows.subset(sorted(order[:held_out]))


def _split_off(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Rows]:
    """(kept, held out): a seeded ``fraction`` of the rows held out, at least one."""
    return _partition(rows, max(1, int(len(rows) * fraction)), seed)


def cap_rows(rows: Rows, keep: int, seed: int) -> tuple[Rows, Rows]:
    """(kept, left out): exactly ``keep`` rows drawn with ``seed`` (``data.max_train_examples``)."""
    return _partition(rows, len(rows) - keep, seed)


def split_seed(cards: Sequence[dict[str, Any]], data: DataConfig, paths: Sequence[str]) -> int:
    """The seed that picks the rows trained directories were trained on (``data.max_train_examples``) and the
    validation share of train: the one they were trained with. Directories trained with different seeds held out
    different rows, so without a validation file they have no common validation rows: refused."""
    seeds = [c.get("training", {}).get("seed", 42) for c in cards]
    if not data.valid and len(set(seeds)) > 1:
        raise ValueError(f"{list(paths)} were trained with seeds {seeds}: each held out other rows of the training "
                         f"file for validation, so rows one of them trained on would choose the blend. Give a "
                         f"validation file (data.valid)")
    return seeds[0]


def training_rows(task: Task, data: DataConfig, seed: int) -> tuple[Rows, Rows | None]:
    """The training file's checked rows, capped at ``data.max_train_examples`` (a seeded sample):
    the rows to train on, and the rows left out (None without a cap)."""
    if not data.train:
        raise ValueError("data.train is required")
    rows = load_rows(data.train, task, data.columns, data.on_bad_row)
    if data.max_train_examples and data.max_train_examples < len(rows):
        return cap_rows(rows, data.max_train_examples, seed)
    return rows, None


def prepare(task: Task, data: DataConfig, tokenizer: Any, model_limit: int, seed: int,
            fit_task: bool = True, rows: tuple[Rows, Rows] | None = None) -> Prepared:
    """Load and check every split before training; fit the task on train only (unless it is
    already fitted, as when fine-tuning); tokenize.

    ``rows``: (train, valid) rows already loaded and checked, e.g. cross-validation folds; the
    train and valid files are then not read.
    """
    if rows:
        (train_rows, valid_rows), rest_rows = rows, None
        available, valid_source = len(train_rows) + len(valid_rows), f"held-out rows of {valid_rows.path}"
    else:
        train_rows, rest_rows = training_rows(task, data, seed)
        available = len(train_rows) + (len(rest_rows) if rest_rows else 0)
        if data.valid:
            valid_rows, valid_source = load_rows(data.valid, task, data.columns, data.on_bad_row), str(data.valid)
        else:
            train_rows, valid_rows = _split_off(train_rows, data.valid_fraction, seed)
            valid_source = f"{data.valid_fraction:.0%} of train"
    if fit_task:
        try:
            task.fit(train_rows.labels or [])
        except ValueError as err:
            raise DataError(f"{train_rows.path}: {err}") from None
    label_column = data.columns.get(task.schema.label, task.schema.label)
    max_length = data.max_length or choose_max_length(
        [len(x) for x in tokenize(tokenizer, train_rows.texts, model_limit)], data.length_percentile, model_limit
    )
    stats = {"train_file": train_rows.path, "train_rows_available": available, "train_examples": len(train_rows),
             "valid_file": valid_source, "valid_examples": len(valid_rows), "max_length": max_length}

    def split(rows: Rows) -> Split:
        return Split(tokenize(tokenizer, rows.texts, max_length), encode_targets(rows, task, label_column),
                     joined(rows.texts))

    test = split(load_rows(data.test, task, data.columns, data.on_bad_row)) if data.test else None
    rest = split(rest_rows) if rest_rows is not None else None
    return Prepared(split(train_rows), split(valid_rows), test, rest, max_length, stats)


def rank_batches(split: Split, batch_size: int, shuffle: bool, seed: int, trainer: L.Trainer) -> LengthGroupedBatches:
    """This rank's share of ``split`` in length-grouped batches (row indices)."""
    return LengthGroupedBatches([len(x) for x in split.ids], batch_size, shuffle=shuffle, seed=seed,
                                num_replicas=trainer.world_size, rank=trainer.global_rank)


def split_loader(split: Split, pad_id: int, batch_size: int, shuffle: bool, seed: int,
                 trainer: L.Trainer) -> torch.utils.data.DataLoader:
    """This rank's length-grouped batches of ``split``, padded per batch."""
    return torch.utils.data.DataLoader(range(len(split.ids)),
                                       batch_sampler=rank_batches(split, batch_size, shuffle, seed, trainer),
                                       collate_fn=lambda idx: split.batch(idx, pad_id))


class TaskData(L.LightningDataModule):
    """Length-grouped batches, padded per batch, each rank taking its own share."""

    def __init__(self, prepared: Prepared, pad_id: int, batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__()
        self.prepared, self.pad_id, self.seed = prepared, pad_id, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return split_loader(self.prepared.train, self.pad_id, self.batch_size, True, self.seed, self.trainer)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return split_loader(self.prepared.valid, self.pad_id, self.eval_batch_size, False, self.seed, self.trainer)


class TrainableModule(L.LightningModule):
    """What every training module shares: AdamW over the trainable weights (warmup, then linear
    decay), and checkpoints that hold those weights only."""

    def __init__(self, settings: TrainerSettings) -> None:
        super().__init__()
        self.settings = settings
        self.strict_loading = False  # checkpoints hold the trainable weights only

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The trainable weights only, not the frozen base (~100s of MB). Runs after the callbacks' hooks,
        # so the weight averages that TrainableEMA put in "state_dict" stay.
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}

    def on_train_epoch_start(self) -> None:
        # Lightning calls set_epoch on a DataLoader's sampler, not on its batch sampler: a new
        # shuffle per epoch needs this.
        self.trainer.train_dataloader.batch_sampler.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> Any:
        s = self.settings
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * s.warmup_ratio)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class TaskModule(TrainableModule):
    """Backbone (one trainable adapter) + task head; loss and metrics come from the task."""

    def __init__(self, backbone: Backbone, adapter: str, head: nn.Module, task: Task, pooling: Pooling,
                 settings: TrainerSettings) -> None:
        super().__init__(settings)
        self.backbone, self.adapter, self.head, self.task, self.pooling = backbone, adapter, head, task, pooling
        self.val_metrics = task.metrics().clone(prefix="val/")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(input_ids, attention_mask, self.pooling))

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        loss = self.task.loss(self(batch["input_ids"], batch["attention_mask"]), batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["targets"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"]).float()
        self.log("val/loss", self.task.loss(logits, batch["targets"]), sync_dist=True, batch_size=len(logits))
        self.val_metrics.update(logits, batch["targets"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()


def _precision(settings: TrainerSettings) -> str:
    if settings.precision:
        return settings.precision
    on_gpu = settings.accelerator in ("gpu", "cuda") or (settings.accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"  # bf16 on CPU measured 20-30x slower


def _trainer(settings: TrainerSettings, monitor: str, work_dir: Path, mode: str = "max") -> L.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logger_cls = TensorBoardLogger if settings.logger == "tensorboard" else CSVLogger
    averaging = [TrainableEMA(settings.ema_decay)] if settings.ema_decay else []
    return L.Trainer(
        accelerator=settings.accelerator, devices=settings.devices, strategy=settings.strategy,
        precision=_precision(settings), max_epochs=settings.max_epochs, max_steps=settings.max_steps,
        val_check_interval=settings.val_check_interval, log_every_n_steps=settings.log_every_n_steps,
        gradient_clip_val=settings.gradient_clip_val, enable_progress_bar=settings.progress_bar,
        use_distributed_sampler=False, default_root_dir=work_dir,
        logger=logger_cls(work_dir, name="logs"),
        callbacks=[
            ModelCheckpoint(dirpath=work_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
                            save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False),
            # Checked after each validation only: a run that ends (max_steps) before its first validation
            # would otherwise fail at the epoch's end with "metric val/... not available".
            EarlyStopping(monitor=monitor, mode=mode, patience=settings.patience, check_on_train_epoch_end=False),
            *averaging,
        ],
    )


def monitored_metric(task: Task, settings: TrainerSettings) -> str:
    """The validation metric that early stopping and the best checkpoint follow, e.g. ``val/accuracy``."""
    return settings.monitor or f"val/{task.monitor}"


def _fit(
    backbone: Backbone, task: Task, head: nn.Module, prepared: Prepared, data: DataConfig,
    settings: TrainerSettings, pooling: Pooling, out: Path,
) -> tuple[L.Trainer, str]:
    """Lightning fit of the active adapter + head; reloads the best validation checkpoint."""
    module = TaskModule(backbone, task.name, head, task, pooling, settings)
    datamodule = TaskData(prepared, backbone.tokenizer.pad_token_id, data.batch_size, data.eval_batch_size, settings.seed)
    return _fit_module(module, datamodule, settings, monitored_metric(task, settings), out)


def _fit_module(module: TrainableModule, datamodule: L.LightningDataModule, settings: TrainerSettings, monitor: str,
                out: Path, mode: str = "max") -> tuple[L.Trainer, str]:
    """Lightning fit (logs and checkpoints in ``<out>.train/``); reloads the best validation checkpoint
    (``mode``: whether the highest or the lowest ``monitor`` value is best)."""
    fit = _trainer(settings, monitor, out.with_name(out.name + ".train"), mode)
    module.train()  # from_pretrained leaves the base in eval mode; train as usual (dropout on)
    fit.fit(module, datamodule=datamodule)
    best = fit.checkpoint_callback.best_model_path if fit.checkpoint_callback else ""
    if best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"], strict=False)
    module.to("cpu")
    return fit, best


def score(backbone: Backbone, task: Task, head: nn.Module, split: Split, pooling: Pooling,
          batch_size: int, adapter: str | None = None, lexical: Lexical | None = None) -> dict[str, Any]:
    """The task's metrics on a tokenized split, through the prediction path (``adapter``: default the task's name);
    with ``lexical``, as ``split_metrics`` gives them."""
    logits = predict_logits(backbone, adapter or task.name, head, split.ids, batch_size, pooling)
    return split_metrics(task, logits, split, lexical)


def split_metrics(task: Task, logits: torch.Tensor, split: Split, lexical: Lexical | None = None) -> dict[str, Any]:
    """The task's metrics of the encoder's ``logits`` on ``split``; with ``lexical``, those of the blend,
    with the encoder's own (``encoder``) and the lexical model's own (``lexical``) beside them."""
    targets = torch.tensor(split.targets)

    def metrics(values: torch.Tensor) -> dict[str, float]:
        return {k: v.item() for k, v in task.metrics()(values, targets).items()}

    if lexical is None:
        return {**metrics(logits), "examples": len(split.ids)}
    lexical_log_probs = lexical.log_probs(split.texts)
    return {**metrics(lexical.blend(logits, split.texts)), "examples": len(split.ids), "encoder": metrics(logits),
            "lexical": metrics(lexical_log_probs)}


def fit_blend(task: Task, train: Split, valid: Split, valid_logits: torch.Tensor) -> Lexical:
    """A lexical part fitted on ``train``, its blend weight chosen on ``valid`` (the encoder's ``valid_logits``)."""
    check_blendable(task)
    lexical = fit_lexical(train.texts, train.targets, len(task.labels))
    lexical.weight = choose_weight(valid_logits, lexical.log_probs(valid.texts), torch.tensor(valid.targets))
    log.info("lexical part: %d features, blend weight %.2f (chosen on validation)",
             len(lexical.vectorizer.vocabulary_), lexical.weight)
    return lexical


def lexical_card(part: Lexical, prepared: Prepared) -> dict[str, Any]:
    """What a card records of a lexical part added to a trained task: its settings and the rows it was fitted on."""
    return {**part.describe(), "train_file": prepared.stats["train_file"],
            "train_examples": prepared.stats["train_examples"], "valid_file": prepared.stats["valid_file"]}


def _validate(backbone: Backbone, task: Task, head: nn.Module, prepared: Prepared, pooling: Pooling,
              batch_size: int, lexical: bool) -> tuple[dict[str, Any], Lexical | None]:
    """Validation metrics of the trained task; with ``lexical``, first fit its lexical part (weight chosen on
    these rows). Returns the metrics and the part (None without ``lexical``)."""
    valid_logits = predict_logits(backbone, task.name, head, prepared.valid.ids, batch_size, pooling)
    part = fit_blend(task, prepared.train, prepared.valid, valid_logits) if lexical else None
    return split_metrics(task, valid_logits, prepared.valid, part), part


def _evaluate(backbone: Backbone, task: Task, head: nn.Module, prepared: Prepared, pooling: Pooling,
              batch_size: int, lexical: bool) -> tuple[dict[str, Any], Lexical | None]:
    """``_validate``, and the test split's metrics when there is one."""
    valid, part = _validate(backbone, task, head, prepared, pooling, batch_size, lexical)
    metrics = {"valid": valid}
    if prepared.test is not None:
        metrics["test"] = score(backbone, task, head, prepared.test, pooling, batch_size, lexical=part)
    return metrics, part


def _card(task: Task, data: DataConfig, model: str, base_dir: Path, pooling: Pooling, lora: dict[str, Any],
          prepared: Prepared, fit: L.Trainer, best: str, seed: int, metrics: dict[str, Any],
          wall_time_s: float, lexical: Lexical | None = None, base_dropout: float | None = None) -> dict[str, Any]:
    card = {
        "task": task.name,
        "task_state": task_state(task),
        "schema": dataclasses.asdict(task.schema),
        "columns": data.columns,
        "base_model": {"name": model, "path": str(base_dir), "checksum": base_checksum(base_dir)},
        "pooling": pooling,
        "max_length": prepared.max_length,
        "lora": lora,
        "training": {**prepared.stats, "steps": fit.global_step, "epochs": fit.current_epoch,
                     "seed": seed, "best_checkpoint": best, "wall_time_s": wall_time_s, "base_dropout": base_dropout},
        "metrics": metrics,
        "ecomnlp_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if lexical is not None:
        card["lexical"] = lexical.describe()
    return card


def train(
    task: str,
    data: DataConfig,
    out: str,
    model: str = "minilm-l6",
    task_options: dict[str, Any] | None = None,
    pooling: Literal["mean", "cls"] = "mean",
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    rows: tuple[Rows, Rows] | None = None,
    lexical: bool = False,
    base_dropout: float | None = None,
) -> dict[str, Any]:
    """Train one task's LoRA adapter and head on the frozen base; save the task directory ``out``.

    Logs and checkpoints go to ``<out>.train/``; the returned summary holds the metrics.
    ``rows``: (train, valid) rows already loaded and checked, read instead of the train and
    valid files (cross-validation folds). ``lexical``: then fit a lexical part (``ecomnlp.lexical``)
    on the training rows and blend it in, its weight chosen on validation. ``base_dropout``: the frozen base's
    own dropout while training (``Backbone``); None keeps the pretrained config's, 0 spares its random masks.
    """
    started = time.perf_counter()
    L.seed_everything(trainer.seed, workers=True)
    base_dir = resolve(model)
    backbone = Backbone(base_dir, dropout=base_dropout)
    the_task = build_task(task, task_options)
    prepared = prepare(the_task, data, backbone.tokenizer, backbone.max_positions, trainer.seed, rows=rows)
    if lexical:
        check_blendable(the_task)  # before the long part
    backbone.add_adapter(the_task.name, lora_config(lora))
    head = the_task.build_head(backbone.hidden_size)
    out_path = Path(out)
    fit, best = _fit(backbone, the_task, head, prepared, data, trainer, pooling, out_path)
    summary: dict[str, Any] = {"out": str(out_path), "steps": fit.global_step, **prepared.stats}
    if not fit.is_global_zero:
        return summary
    metrics, part = _evaluate(backbone, the_task, head, prepared, pooling, data.eval_batch_size, lexical)
    summary.update(metrics=metrics, wall_time_s=round(time.perf_counter() - started, 1))
    if part is not None:
        summary["lexical_weight"] = part.weight
    card = _card(the_task, data, model, base_dir, pooling, dataclasses.asdict(lora), prepared, fit, best,
                 trainer.seed, metrics, summary["wall_time_s"], part, base_dropout)
    save_artifact(out_path, backbone, the_task.name, head, card, part)
    return summary


def finetune(
    source: str,
    data: DataConfig,
    out: str,
    examples: int | None = None,
    old_test: str | None = None,
    trainer: TrainerSettings = TrainerSettings(),
) -> dict[str, Any]:
    """Continue a trained task on a new domain's rows and save it as a new task directory ``out``.

    The source directory is left unchanged. ``examples`` caps the new training rows (a seeded
    random subset); without ``data.test`` the new rows not trained on are the held-out test.
    Before and after fine-tuning, the task is scored on the new held-out rows and, given
    ``old_test``, on the old domain's test file (forgetting). A lexical part of the source is
    refitted on the new training rows, its weight chosen again on the new validation rows. The base's own
    dropout is the source's (``base_dropout`` of ``train``).
    """
    from .artifact import read_card
    from .predictor import attach, backbone_for

    started = time.perf_counter()
    L.seed_everything(trainer.seed, workers=True)
    card = read_card(source)
    base_dropout = card.get("training", {}).get("base_dropout")  # as the source trained (an ensemble: refused below)
    backbone = backbone_for(source, None, "cpu", base_dropout)
    model = attach(backbone, source, card["task"], trainable=True)
    the_task, head, pooling = model.task, model.head, card["pooling"]
    if examples is not None:
        data = dataclasses.replace(data, max_train_examples=examples)
    data = dataclasses.replace(data, columns=data.columns or card.get("columns", {}), max_length=card["max_length"])
    prepared = prepare(the_task, data, backbone.tokenizer, backbone.max_positions, trainer.seed, fit_task=False)
    held_out = {"new_domain": prepared.test or prepared.rest}
    if held_out["new_domain"] is None:
        raise ValueError("no held-out rows of the new domain: give data.test or examples smaller than the file")
    if old_test:
        old = load_rows(old_test, the_task, card.get("columns", {}), data.on_bad_row)
        label_column = card.get("columns", {}).get(the_task.schema.label, the_task.schema.label)
        held_out["old_domain"] = Split(tokenize(backbone.tokenizer, old.texts, prepared.max_length),
                                       encode_targets(old, the_task, label_column), joined(old.texts))

    def report(lexical: Lexical | None) -> dict[str, dict[str, float]]:
        return {name: score(backbone, the_task, head, split, pooling, data.eval_batch_size, lexical=lexical)
                for name, split in held_out.items()}

    before = report(model.lexical)
    backbone.use(the_task.name, trainable=True)
    out_path = Path(out)
    fit, best = _fit(backbone, the_task, head, prepared, data, trainer, pooling, out_path)
    summary: dict[str, Any] = {"out": str(out_path), "source": str(source), "steps": fit.global_step, **prepared.stats}
    if not fit.is_global_zero:
        return summary
    refit = model.lexical is not None
    valid, part = _validate(backbone, the_task, head, prepared, pooling, data.eval_batch_size, refit)
    metrics = {"valid": valid, "before": before, "after": report(part)}
    summary.update(metrics=metrics, wall_time_s=round(time.perf_counter() - started, 1))
    if part is not None:
        summary["lexical_weight"] = part.weight
    new_card = _card(the_task, data, card["base_model"]["name"], backbone.base_dir, pooling, card["lora"], prepared,
                     fit, best, trainer.seed, metrics, summary["wall_time_s"], part, base_dropout)
    new_card["finetuned_from"] = {"path": str(source), "created": card.get("created"), "metrics": card.get("metrics")}
    save_artifact(out_path, backbone, the_task.name, head, new_card, part)
    return summary


def add_lexical(source: str, data: DataConfig, out: str) -> dict[str, Any]:
    """Add a lexical part to a trained task (``ecomnlp.lexical``) and save it as a new task directory ``out``.

    The lexical model is fitted on ``data.train`` (capped by ``data.max_train_examples`` as training caps it, with
    the task's training seed), its blend weight chosen on ``data.valid`` (else ``data.valid_fraction`` of train,
    the share training held out); the
    encoder's adapter and head are copied unchanged. The source directory is left unchanged. The summary
    holds validation (and, given ``data.test``, test) metrics of the blend, the encoder alone and the lexical
    model alone.
    """
    from .artifact import read_card
    from .predictor import attach, backbone_for

    started = time.perf_counter()
    card = read_card(source)
    if card.get("ensemble"):
        raise ValueError(f"{source} is an ensemble: build it again with a lexical part (`ecomnlp ensemble --lexical true`)")
    backbone = backbone_for(source, None, "cpu")
    model = attach(backbone, source, card["task"])
    check_blendable(model.task)
    data = dataclasses.replace(data, columns=data.columns or card.get("columns", {}), max_length=card["max_length"])
    prepared = prepare(model.task, data, backbone.tokenizer, backbone.max_positions, split_seed([card], data, [source]),
                       fit_task=False)
    metrics, part = _evaluate(backbone, model.task, model.head, prepared, card["pooling"], data.eval_batch_size,
                              lexical=True)
    wall = round(time.perf_counter() - started, 1)
    new_card = {**card, "lexical": {**lexical_card(part, prepared), "wall_time_s": wall},
                "metrics": metrics, "lexical_added_to": {"path": str(source), "metrics": card.get("metrics")},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_artifact(out, backbone, model.adapter, model.head, new_card, part)
    return {"out": str(out), "source": str(source), "lexical": new_card["lexical"], "metrics": metrics,
            "wall_time_s": wall}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def record_run(card: dict[str, Any], work_dir: str | Path, fit: L.Trainer, best: str | None,
               trainer: TrainerSettings, batch_size: int, started: float, train_wall: float,
               metrics: dict[str, Any], k: int, stats: dict[str, Any], **details: Any) -> dict[str, Any]:
    """Fill a ranking task's card (its ``training`` section, metrics at ``k``, version, date) and return the
    run's JSON-able summary. ``stats``: per-split sizes; ``details``: task-specific training facts."""
    wall = round(time.perf_counter() - started, 1)
    card["training"] = {
        "splits": stats, **details, "steps": fit.global_step, "epochs": fit.current_epoch, "best_checkpoint": best,
        "seed": trainer.seed, "lr": trainer.lr, "max_epochs": trainer.max_epochs, "batch_size": batch_size,
        "train_wall_time_s": train_wall, "wall_time_s": wall, "peak_rss_mb": peak_rss_mb(),
    }
    card.update(metrics=metrics, k=k, ecomnlp_version=_version(),
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return {"out": str(work_dir), "metrics": metrics, "steps": fit.global_step, "epochs": fit.current_epoch,
            "splits": stats, "train_wall_time_s": train_wall, "wall_time_s": wall,
            "peak_rss_mb": card["training"]["peak_rss_mb"]}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ecomnlp")
    except PackageNotFoundError:
        return "0+local"
