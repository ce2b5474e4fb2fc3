"""The end of an epoch for trainers that are not judged by nnU-Net's pseudo Dice.

nnUNetTrainer.on_epoch_end prints the epoch's losses and pseudo Dice, writes checkpoint_latest every
`save_every` epochs (not after the last), checkpoint_best whenever the EMA pseudo Dice improves (kept in
`_best_ema`, which every checkpoint carries), draws progress.png on rank 0 and counts the epoch.
`EpochEnd` keeps that sequence; the trainer says what the log shows (`epoch_lines`), which number picks
checkpoint_best (`selection`, `best_is_lowest`) and what it draws (`write_pictures`, with `plot_losses`
for the usual curves).
"""
from __future__ import annotations

import os
from time import time

import numpy as np

from fomo_nnunet.plots import plot_curves
from fomo_nnunet.training.schedules import every_nth_epoch


class EpochEnd:
    """Mixin: nnU-Net's `on_epoch_end` with the trainer's own lines, best-checkpoint number and pictures."""

    best_is_lowest: bool = False  # True when a lower selection value is better (a loss)

    def epoch_lines(self) -> list[tuple]:
        """The epoch's lines for the log, each the arguments of one print_to_log_file (before 'Epoch time')."""
        raise NotImplementedError

    def selection(self) -> tuple[float, str]:
        """(the number that picks checkpoint_best, the log line when it is a new best)."""
        raise NotImplementedError

    def write_pictures(self, epoch: int) -> None:
        """Pictures after `epoch` (rank 0 only)."""

    def is_new_best(self, value: float) -> bool:
        if not np.isfinite(value):
            return False
        if self._best_ema is None:
            return True
        return value < self._best_ema if self.best_is_lowest else value > self._best_ema

    def on_epoch_end(self):
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        for line in self.epoch_lines():
            self.print_to_log_file(*line)
        log = self.logger.get_value
        elapsed = log("epoch_end_timestamps", -1) - log("epoch_start_timestamps", -1)
        self.print_to_log_file(f"Epoch time: {np.round(elapsed, 2)} s")
        epoch = self.current_epoch
        if (epoch + 1) % self.save_every == 0 and epoch != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        value, message = self.selection()
        if self.is_new_best(value):
            self._best_ema = value  # nnU-Net's name; every checkpoint carries it
            self.print_to_log_file(message)
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.write_pictures(epoch)
        self.current_epoch += 1

    def plot_losses(self, title: str, secondary: dict[str, str], secondary_label: str) -> None:
        """progress.png: training and validation loss per epoch, and the logged series `secondary`
        (legend -> logger key) on a second axis, all cut to the epochs every series has. Drawn every
        `progress_plot_every` epochs and after the last one (a drawing's cost: docs/results/cpu-speed.md)."""
        # on_epoch_end draws before it counts the epoch; progress_plot_every is the Budget's
        if not every_nth_epoch(self.current_epoch, self.progress_plot_every, self.num_epochs):
            return
        log = self.logger.get_value
        series = {"train loss": log("train_losses", None), "val loss": log("val_losses", None),
                  **{name: log(key, None) for name, key in secondary.items()}}
        n = min(len(values) for values in series.values())
        cut = {name: values[:n] for name, values in series.items()}
        plot_curves(os.path.join(self.output_folder, "progress.png"),
                    {name: cut[name] for name in ("train loss", "val loss")}, title,
                    secondary={name: cut[name] for name in secondary}, secondary_label=secondary_label)
