"""A thin `transformers.Trainer` that hands every strategy decision to a `Strategy` object.

It knows no strategy by name: the strategy builds the optimizer groups, splits training into optimisation
phases (each with fresh optimizer state and its own schedule), decides at each epoch boundary what is frozen and
how each group's learning rate is scaled, and may add a penalty to the loss. Strategy hooks always get the bare
model (`self.model`): a compiled or DDP-wrapped model renames parameters (`_orig_mod.`, `module.`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback, get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import write_checkpoint_state
from .errors import MedftError
from .modeling import count_trainable
from .rng import derived_seed, isolated_rng
from .strategies import Strategy


class StrategyTrainer(Trainer):
    """`run_identity` (strategy, model, dataset, class names) goes into every checkpoint, so a resume can check
    that it continues the same run."""

    def __init__(self, *args, strategy: Strategy, run_identity: dict | None = None, **kwargs):
        training_args = kwargs["args"] if "args" in kwargs else args[1]
        if training_args.ddp_find_unused_parameters is None:
            # Read when the Trainer builds its accelerator, so set first. Frozen tensors get no gradient: DDP must
            # be told so instead of waiting for them; where nothing freezes, it is spared looking for them.
            training_args.ddp_find_unused_parameters = strategy.changes_trainable_set
        super().__init__(*args, **kwargs)
        self.strategy = strategy
        self.strategy.num_epochs = math.ceil(self.args.num_train_epochs)
        self.strategy.setup(self.model)
        self.run_identity = run_identity or {"strategy": strategy.name}
        self.trainable_per_epoch: dict[int, int] = {}
        self.add_callback(StrategyCallback(self))

    def restore_strategy_state(self, saved: dict) -> None:
        """Restore what the Trainer's own checkpoint does not hold (before `train(resume_from_checkpoint=...)`);
        `saved` comes from `checkpoints.load_checkpoint_state`."""
        self.strategy.load_state_dict(saved["strategy_state"])
        self.trainable_per_epoch = {int(epoch): count for epoch, count in saved["trainable_per_epoch"].items()}

    def save_strategy_state(self, checkpoint: str | Path) -> None:
        state = {"strategy_state": self.strategy.state_dict(), "trainable_per_epoch": self.trainable_per_epoch}
        write_checkpoint_state(checkpoint, self.run_identity, state)

    def floating_point_ops(self, inputs: dict) -> int:
        """The Trainer's estimate (6 x input elements x parameters) with the parameters counted once (the Trainer
        walks every module for them on every step). Counted at the first step: inside `cache.head_only`, the head's,
        as the Trainer's own estimate would count there."""
        return 6 * inputs[self.model.main_input_name].numel() * self._parameter_count

    @functools.cached_property
    def _parameter_count(self) -> int:
        return self.model.num_parameters(exclude_embeddings=True)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer class and settings (--optim, betas, eps), over the strategy's groups.

        Every parameter is in the optimizer from the start: a frozen tensor has no gradient, so the optimizer
        skips it and it stays bit-identical; once unfrozen, its moments start from zero.
        """
        if self.optimizer is None:
            model = model or self.model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            groups = self.strategy.param_groups(model, self.args.weight_decay)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            # A group's `lr_scale` (timm's convention, e.g. layer-wise decay) scales its rate before any scheduler
            # reads it, so warm-up and decay apply on top whatever --lr_scheduler_type is.
            for group in self.optimizer.param_groups:
                group["lr"] *= group.get("lr_scale", 1.0)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's schedule (--lr_scheduler_type, warm-up), restarted at the start of every strategy phase
        and peaking at that phase's learning rate."""
        phases = self.strategy.phases()
        if len(phases) == 1 or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        steps_per_epoch = num_training_steps / self.strategy.num_epochs
        starts = [round(phase.start_epoch * steps_per_epoch) for phase in phases]
        pieces = []
        for phase, start, end in zip(phases, starts, [*starts[1:], num_training_steps], strict=True):
            length = end - start
            warmup = (
                self.args.get_warmup_steps(length)
                if phase.warmup_ratio is None
                else math.ceil(phase.warmup_ratio * length)
            )
            peak = phase.learning_rate if phase.learning_rate is not None else self.args.learning_rate
            pieces.append((start, peak / self.args.learning_rate, self._schedule_shape(warmup, length)))

        def multiplier(step: int) -> float:
            start, scale, shape = next(piece for piece in reversed(pieces) if piece[0] <= step)
            return scale * shape(step - start)

        self.lr_scheduler = LambdaLR(optimizer or self.optimizer, multiplier)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _schedule_shape(self, warmup_steps: int, num_steps: int):
        """The multiplier-by-step function of --lr_scheduler_type over `num_steps` steps."""
        # at the run's rate, as transformers builds it: an absolute setting (cosine_with_min_lr's min_lr) is then
        # read against the rate it is given for, not as a fraction of 1
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.args.learning_rate)
        scheduler = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=probe,
            num_warmup_steps=warmup_steps,
            num_training_steps=num_steps,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )
        if not isinstance(scheduler, LambdaLR):
            raise MedftError(
                f"--strategy {self.strategy.name} restarts the schedule at each phase and needs a LambdaLR-based "
                f"schedule (linear, cosine, constant, ...); --lr_scheduler_type gave {type(scheduler).__name__}."
            )
        return scheduler.lr_lambdas[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Keep frozen BatchNorm in eval mode after the Trainer's `model.train()`, and add the strategy's penalty.

        This is the one hook between `training_step`'s `model.train()` and the forward. The penalty joins the
        loss before backward, so gradient accumulation, AMP loss scaling and DDP's all-reduce all see it.
        """
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.strategy.prepare_forward(self.model)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        penalty = self.strategy.penalty(self.model)
        if penalty is not None:
            # The penalty must reach each optimizer step once, as the data loss does. A loss already normalised over
            # the whole accumulated batch (a `compute_loss_func`: --class_weights auto) is not divided by the
            # accumulation steps after this, so the penalty's share of it is divided here.
            if self._loss_scaled_for_accumulation(num_items_in_batch):
                penalty = penalty / self.current_gradient_accumulation_steps
            loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        """transformers' rule (`Trainer.training_step`) for a loss it will not divide by the accumulation steps."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or bool(self.compute_loss_func)

    # ---- epoch boundaries (called by StrategyCallback) ------------------------------------------------
    def begin_strategy_epoch(self, epoch: int, resumed_mid_epoch: bool = False) -> None:
        """Freeze what the strategy says for `epoch`; at a true epoch start, also measure and apply its rate
        factors and reset the optimizer's moments at a new phase or if the strategy asks to. Resuming inside an
        epoch, the factors and optimizer state come back from the checkpoint with the optimizer and scheduler."""
        model = self.model
        self.strategy.begin_epoch(model, epoch)
        if not resumed_mid_epoch:
            with isolated_rng(derived_seed(self.args.seed, epoch), devices=range(torch.cuda.device_count())):
                scales = self.strategy.lr_scales(model, epoch, self._measurement_losses)
            if scales is not None:
                self._apply_lr_scales(scales)
            new_phase = epoch > 0 and epoch in {phase.start_epoch for phase in self.strategy.phases()}
            if self.strategy.resets_optimizer_state or new_phase:
                self.optimizer.state.clear()
        self.trainable_per_epoch[epoch] = count_trainable(model)
        # To every --report_to integration (TensorBoard, Trackio, ...): what the strategy does this epoch.
        self.log({"trainable_parameters": float(self.trainable_per_epoch[epoch]), **self.strategy.epoch_signals()})

    def _apply_lr_scales(self, scales: list[float]) -> None:
        """Multiply each group's scheduled rate by its factor: base_lrs carry the factors, so every later
        scheduler step (warm-up, decay) keeps them."""
        scheduler = self.lr_scheduler
        if not isinstance(scheduler, LambdaLR):
            raise MedftError(
                f"--strategy {self.strategy.name} scales learning rates per tensor and needs a LambdaLR-based "
                f"schedule (linear, cosine, constant, ...); --lr_scheduler_type gave {type(scheduler).__name__}."
            )
        groups = self.optimizer.param_groups
        if len(scales) != len(groups):
            raise MedftError(f"{self.strategy.name} gave {len(scales)} rate factors for {len(groups)} groups.")
        for index, (group, scale) in enumerate(zip(groups, scales, strict=True)):
            scheduler.base_lrs[index] = group["initial_lr"] * scale
            group["lr"] = scheduler.base_lrs[index] * scheduler.lr_lambdas[index](scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]

    def _measurement_losses(self, count: int) -> Iterator[torch.Tensor]:
        """The training loss on each of `count` random training batches, computed as training computes it (the
        Trainer's `compute_loss`: --class_weights, label smoothing) but without the strategy's penalty."""
        for batch in self._measurement_batches(count):
            yield super().compute_loss(self.model, batch)

    def _measurement_batches(self, count: int) -> Iterator[dict[str, torch.Tensor]]:
        """`count` random training batches (with training augmentation), drawn from the current RNG."""
        batch_size = self.args.per_device_train_batch_size
        order = torch.randperm(len(self.train_dataset)).tolist()
        for start in range(0, min(count * batch_size, len(order)), batch_size):
            rows = [self.train_dataset[i] for i in order[start : start + batch_size]]
            yield self._prepare_inputs(self.data_collator(rows))


class StrategyCallback(TrainerCallback):
    """Tells the strategy how long training is and when an epoch starts."""

    def __init__(self, trainer: StrategyTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.strategy.num_epochs = math.ceil(state.num_train_epochs)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.trainer.save_strategy_state(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = math.floor(state.epoch + 1e-9)
        if hasattr(self.trainer.train_dataset, "set_epoch"):
            self.trainer.train_dataset.set_epoch(epoch)
        self.trainer.begin_strategy_epoch(epoch, resumed_mid_epoch=state.epoch - epoch > 1e-9)
