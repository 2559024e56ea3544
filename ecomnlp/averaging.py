"""Exponential moving average of the trainable weights (LoRA + head) during a Lightning fit."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch


class TrainableEMA(L.Callback):
    """Keeps an exponential moving average of the trainable weights, updated after every training
    batch; validation, checkpoints and the weights left at the end of the fit use the average.

    Lightning's ``EMAWeightAveraging`` averages every parameter: with the frozen e5-small base a step
    took 3.75 s on 2 CPU cores against 2.6-2.9 s for this callback. The trainable weights are under 1%.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay  # checked by TrainerSettings
        self.average: dict[str, torch.Tensor] = {}

    @staticmethod
    def _trainable(module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:  # on its device by now
        self.average = {n: p.detach().clone() for n, p in self._trainable(module).items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: Any) -> None:
        for name, param in self._trainable(module).items():
            self.average[name].lerp_(param, 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self, module: L.LightningModule) -> None:
        for name, param in self._trainable(module).items():
            raw = param.clone()
            param.copy_(self.average[name])
            self.average[name].copy_(raw)

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.average:
            self._swap(module)  # validate the average

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.average:
            self._swap(module)  # back to the raw weights for training

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"].update({name: avg.clone() for name, avg in self.average.items()})

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for name, param in self._trainable(module).items():
            param.copy_(self.average[name])
