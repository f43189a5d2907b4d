"""One log line per epoch in place of the Trainer's raw dict per log call, so a study's log (many cells, many
workers) reads as a list of epochs: which run, which epoch, training loss, the validation score and the best so far."""

from __future__ import annotations

import logging
import math
import time

from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

logger = logging.getLogger("medft_hf")


class EpochLog(TrainerCallback):
    """After each epoch's evaluation: `<run> epoch e/n: train loss, validation <metric> (best so far, this epoch
    included), trainable parameters, seconds`."""

    def __init__(self, run: str):
        self.run = run
        self.started = time.monotonic()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        latest = {key: value for entry in state.log_history for key, value in entry.items()}
        metric = args.metric_for_best_model or "loss"
        score = metrics.get(f"eval_{metric}", math.nan)
        # state.best_metric is updated after this callback, at the checkpoint: it still holds the earlier epochs' best
        earlier = state.best_metric if state.best_metric is not None else score
        best = max(earlier, score) if args.greater_is_better else min(earlier, score)
        logger.info(
            "%s epoch %d/%d: train loss %.4f, validation %s %.4f (best %.4f), %s trainable parameters, %.1f s",
            self.run,
            round(state.epoch or 0),
            math.ceil(args.num_train_epochs),
            latest.get("loss", math.nan),
            metric,
            score,
            best,
            f"{int(latest.get('trainable_parameters', 0)):,}",
            time.monotonic() - self.started,
        )


class _BarsOnly(ProgressCallback):
    """transformers' progress bars without the dict it writes under them at every log call."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def use_epoch_log(trainer: Trainer, run: str) -> None:
    """Replace the Trainer's printing of every log dict (PrinterCallback, or ProgressCallback's) by `EpochLog`."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_BarsOnly)
    trainer.add_callback(EpochLog(run))
