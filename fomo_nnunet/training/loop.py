"""nnU-Net's training loop (`nnUNetTrainer.run_training`), its hooks called in the same order, stopped at a
wall-clock limit after a whole epoch: a pretraining that fits a short loan of a GPU.

The learning-rate schedule still spans the trainer's `num_epochs`; a run stopped early ends before the
schedule does, and the record says so.
"""
from __future__ import annotations

import time

import torch


def end_epoch(trainer, train_outputs: list) -> None:
    """The rest of an epoch after its training steps, as nnU-Net's run_training does it: the training
    outputs, the validation steps, the epoch's end."""
    trainer.on_train_epoch_end(train_outputs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        val = [trainer.validation_step(next(trainer.dataloader_val))
               for _ in range(trainer.num_val_iterations_per_epoch)]
        trainer.on_validation_epoch_end(val)
    trainer.on_epoch_end()


def train_until(trainer, seconds: float, clock=time.monotonic) -> dict:
    """Train epochs until the next would pass `seconds` (judged by the longest epoch so far), then end the run as
    nnU-Net does (checkpoint_final). Returns what ran."""
    start = clock()
    trainer.on_train_start()
    epoch_seconds: list[float] = []
    steps = 0
    stopped_by = "the planned epochs"
    while trainer.current_epoch < trainer.num_epochs:
        t0 = clock()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)]
        steps += len(outputs)
        end_epoch(trainer, outputs)
        epoch_seconds.append(clock() - t0)
        if trainer.current_epoch < trainer.num_epochs and \
                clock() - start + max(epoch_seconds) > seconds:
            stopped_by = f"the wall-clock limit of {seconds:.0f} s"
            break
    train_seconds = clock() - start
    trainer.on_train_end()
    return {"epochs_done": len(epoch_seconds), "steps_done": steps, "train_seconds": round(train_seconds, 1),
            "seconds_per_step": round(sum(epoch_seconds) / max(steps, 1), 4), "stopped_by": stopped_by,
            "end_seconds": round(clock() - start - train_seconds, 1)}
