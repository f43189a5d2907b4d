"""Fine-tune a pretrained timm backbone on a medical image dataset with one of the paper's eight strategies.

    accelerate launch train.py --strategy lpft --model timm/densenet121.tv_in1k --dataset <hub id or folder>

The recipe: parse arguments, load data and model (all checks happen here, before anything is written),
build the strategy, train with the best epoch chosen on validation, evaluate the test split once, save.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from argparse import SUPPRESS, RawDescriptionHelpFormatter
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import torch
import transformers
from transformers import EarlyStoppingCallback, HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import PredictionOutput

from . import defaults
from . import metrics as metrics_lib
from .cache import check_feature_cache, image_datasets, on_stored_features
from .checkpoints import load_checkpoint_state, resolve_checkpoint
from .data import AUGMENTATIONS, DEFAULT_AUGMENTATION, ImageClassificationSplits, Preprocessing, load_splits
from .errors import MedftError, exit_on_error
from .figures import run_figures
from .hub import check_push_ready, push_model
from .losses import inverse_frequency_weights, weighted_cross_entropy
from .modeling import (
    DEFAULT_MODEL,
    BlockLayout,
    load_model,
    min_image_size,
    pretrained_source,
    record_input_config,
)
from .progress import use_epoch_log
from .results import (
    RESULTS_FILE,
    RunResult,
    discard_finished_run,
    environment,
    epoch_history,
    is_finished_run,
    save_model_atomic,
)
from .rng import determinism_restored
from .strategies import (
    STRATEGIES,
    build_strategy,
    check_run_length,
    coinciding_strategies,
    strategy_config_classes,
)
from .trainer import StrategyTrainer

logger = logging.getLogger("medft_hf")


@dataclass
class ModelArguments:
    strategy: str = field(
        default="ft",
        metadata={"help": "Fine-tuning strategy (see the list below).", "choices": list(STRATEGIES)},
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "A timm Hub id (timm/resnet50.tv_in1k) or a local folder in timm Hub layout."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train and evaluate at this size (default: the backbone's pretrained input size)."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "The Hub id of the backbone, for the model card when --model is a local copy (default: from "
            "the backbone's timm config, e.g. timm/tf_efficientnet_lite0.in1k)."
        },
    )


@dataclass
class DataArguments:
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id or a local folder (Hub layout or imagefolder). Default: the bundled "
            "BreastMNIST (MedMNIST v2, CC BY 4.0)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's config name, if any."})
    dataset_id: str | None = field(
        default=None,
        metadata={"help": "The dataset's Hub id, for the model card when --dataset is a local copy."},
    )
    image_column: str | None = field(default=None, metadata={"help": "Default: the first Image column."})
    label_column: str | None = field(default=None, metadata={"help": "Default: the first ClassLabel column."})
    val_fraction: float = field(
        default=defaults.VAL_FRACTION,
        metadata={"help": "Share of train carved out (stratified, seeded) when there is no validation split."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a seeded random subset of this many images."}
    )
    min_validation_size: int = field(
        default=0,
        metadata={
            "help": "A validation split with fewer rows is not used: validation is carved from train (stratified, "
            "seeded, --val_fraction) as when there is none, with a warning."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate each epoch on a stratified, seeded subset of this many validation images (test is "
            "always evaluated whole, once)."
        },
    )
    augmentation: str = field(
        default=DEFAULT_AUGMENTATION,
        metadata={
            "help": "Training augmentation: 'light' (random resized crop of 85-100 percent of the area, no aspect "
            "change, flip), 'rrc' (crop of 50-100 percent, aspect 3/4-4/3, flip) or 'none'. No colour or intensity "
            "jitter.",
            "choices": list(AUGMENTATIONS),
        },
    )
    cache_images: bool = field(
        default=True,
        metadata={
            "help": "Decode and resize every image once into the datasets cache and augment uint8 tensors (the fast "
            "path). False: decode and augment with PIL on every step, cropping from the full-resolution image."
        },
    )
    cache_features: bool = field(
        default=False,
        metadata={
            "help": "For the epochs in which the strategy trains the new head alone (all of lp's, lpft's LP phase, "
            "gradual unfreezing's first stage): run the frozen backbone once per image and train the head on the "
            "stored features, of unaugmented images. With lp it needs --augmentation none (it is exact then)."
        },
    )
    modality: str | None = field(
        default=None, metadata={"help": "Imaging modality (X-ray, MRI, histology, ...), for the model card's tags."}
    )
    positive_class: str | None = field(
        default=None,
        metadata={
            "help": "Binary tasks: the class whose recall is the sensitivity (e.g. the disease). Default: the second "
            "class (label 1)."
        },
    )
    class_weights: str = field(
        default="none",
        metadata={
            "help": "'auto': weight the loss by inverse class frequency in train (every class counts equally); "
            "'none': plain cross-entropy.",
            "choices": ["none", "auto"],
        },
    )


@dataclass
class MedftTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for image classification from a pretrained CNN."""

    output_dir: str | None = field(default=None, metadata={"help": "Default: outputs/<strategy>."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in --output_dir instead of refusing to."}
    )
    num_train_epochs: float = defaults.NUM_TRAIN_EPOCHS
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_scheduler_type: str = "cosine"
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader worker processes. Default: 0 on a CPU (the decoded-image cache leaves them nothing to "
            "do, and they would take cores from the model), min(8, CPU cores) with a GPU."
        },
    )
    dataloader_pin_memory: bool | None = field(
        default=None, metadata={"help": "Pin batches in page-locked memory. Default: when a GPU is present."}
    )
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    logging_strategy: str = "epoch"
    save_total_limit: int | None = 1
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = "balanced_accuracy"
    greater_is_better: bool | None = True
    remove_unused_columns: bool = False
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without a better validation score; the best epoch is "
            "restored (transformers' EarlyStoppingCallback)."
        },
    )
    bootstrap_resamples: int = field(
        default=1000, metadata={"help": "Bootstrap resamples for the test metrics' 95 percent intervals (0: none)."}
    )
    skip_test: bool = field(
        default=False,
        metadata={
            "help": "Leave the test split unevaluated (a search trial: configurations are compared on validation, "
            "and only the chosen one meets the test split)."
        },
    )
    channels_last: bool = field(
        default=False,
        metadata={
            "help": "Train and evaluate with the model in channels-last memory format (timm's --channels-last): "
            "faster convolutions on some hardware (measured in docs/performance.md), the same results up to float "
            "rounding."
        },
    )
    save_model: bool = field(
        default=defaults.SAVE_MODEL,
        metadata={
            "help": "Write the final model to --output_dir. false: results.json and figures only, for runs whose "
            "weights nobody will use (a study's cells); checkpoints are still written during training, for "
            "resuming and the best epoch (medft-benchmark removes a finished cell's)."
        },
    )

    def __post_init__(self):
        # Checked before transformers' own set-up, which would fail later with a raw traceback (or not at all).
        problems = [
            f"--{name} {value}: must be {relation} {limit:g}"
            for name, relation, limit in (
                ("learning_rate", ">", 0),
                ("num_train_epochs", ">", 0),
                ("per_device_train_batch_size", ">=", 1),
                ("per_device_eval_batch_size", ">=", 1),
                ("gradient_accumulation_steps", ">=", 1),
                ("weight_decay", ">=", 0),
                ("warmup_steps", ">=", 0),
                ("early_stopping_patience", ">=", 1),
                ("bootstrap_resamples", ">=", 0),
                ("dataloader_num_workers", ">=", 0),
            )
            for value in [getattr(self, name, None)]
            if value is not None and not (value > limit if relation == ">" else value >= limit)
        ]
        if problems:
            raise MedftError("; ".join(problems) + ".")
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available()
        super().__post_init__()


# With the strategy's, data's and model's settings, what a checkpoint must match: it resumes only the run that wrote it.
# Not --optim: transformers' default follows the torch version, and its state loads across the AdamW implementations.
OPTIMISATION_SETTINGS = (
    "seed",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "max_grad_norm",
    "channels_last",  # the same arithmetic in another order: rounding differs, so a resume would splice two runs
)


class HelpFormatter(RawDescriptionHelpFormatter):
    """The epilog as written, and every flag's default after its help (where it has one)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _parser() -> HfArgumentParser:
    epilog = "strategies:\n" + "\n".join(
        f"  {name:<9} {cls.summary}\n  {'':<9} ({cls.reference})" for name, cls in STRATEGIES.items()
    )
    return HfArgumentParser(
        [ModelArguments, DataArguments, *strategy_config_classes(), MedftTrainingArguments],
        description=__doc__,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )


def parse_dict(flags: dict[str, Any]):
    """The arguments of `parse_args`, from typed values (a study cell, a search trial) instead of a command line."""
    try:
        model_args, data_args, *strategy_configs, training_args = _parser().parse_dict(flags)
    except ValueError as error:  # an argument no dataclass has
        raise MedftError(f"{error}. See `train.py --help` for the arguments.") from error
    return model_args, data_args, strategy_configs, training_args


def parse_command_line(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """The dataclasses of `argv`; an argument none of them has is refused as argparse refuses it (usage, `error:`,
    exit 2), not with HfArgumentParser's traceback."""
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    return tuple(parsed)


def parse_args(argv: list[str] | None = None):
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        # Like transformers' examples: every argument from one file (`python train.py recipe.yaml`).
        if not Path(argv[0]).is_file():
            raise MedftError(f"{argv[0]}: no such file of arguments.")
        read = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        try:
            parsed = read(argv[0])
        except (TypeError, ValueError) as error:  # an unknown key, or a value of the wrong type
            raise MedftError(f"{argv[0]}: {error}") from error
    else:
        parsed = parse_command_line(parser, argv)
    model_args, data_args, *strategy_configs, training_args = parsed
    return model_args, data_args, strategy_configs, training_args


@determinism_restored()  # --full_determinism is process-wide; a grid's next run in this process starts afresh
def run(model_args: ModelArguments, data_args: DataArguments, strategy_configs, training_args) -> RunResult:
    """Train and evaluate one model; returns what it writes to `results.json`."""
    strategy_cls = STRATEGIES[model_args.strategy]
    config = next((c for c in strategy_configs if type(c) is strategy_cls.config_class), strategy_cls.config_class())
    config.check()  # the flags alone first: a bad value stops the run before any data is read
    output_dir = Path(training_args.output_dir)
    if is_finished_run(output_dir) and not training_args.overwrite_output_dir:
        raise MedftError(
            f"--output_dir {output_dir} holds a finished run ({RESULTS_FILE}). Choose another folder or pass "
            "--overwrite_output_dir."
        )
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
    # We push once, at the end, with a model card (not the Trainer's pushes of every checkpoint).
    unused = [
        f"--{name}"
        for name, default in (("hub_strategy", "every_save"), ("hub_token", None), ("hub_revision", None))
        if getattr(getattr(training_args, name), "value", getattr(training_args, name)) != default
    ]
    if unused:
        raise MedftError(
            f"{', '.join(unused)}: not used by medft-hf, which pushes once, at the end, with a model card, to the main "
            "branch, using the token of HF_TOKEN or `hf auth login`. Drop the flag."
        )
    if training_args.dataloader_persistent_workers and data_args.augmentation != "none":
        raise MedftError(
            "--dataloader_persistent_workers: a persistent worker keeps its copy of the training set at epoch 0, so "
            "every epoch would repeat the first one's augmentation. Drop the flag (workers restart each epoch)."
        )
    push_to = training_args.hub_model_id if training_args.push_to_hub else None
    if training_args.push_to_hub and not training_args.save_model:
        raise MedftError("--push_to_hub pushes the final model, which --save_model false does not write. Drop one.")
    if training_args.push_to_hub:
        check_push_ready(push_to)
        training_args.push_to_hub = False
    set_seed(training_args.seed)

    # 1. Data and model: every check happens here, before anything is written.
    splits = run_splits(data_args, training_args.seed)
    if training_args.skip_test:
        splits = replace(splits, test=None)  # not even decoded
    positive_label = positive_label_of(data_args.positive_class, splits.class_names)
    model = load_model(model_args.model, splits.class_names)
    image_size = model_args.image_size or model.config.pretrained_cfg["input_size"][-1]
    if image_size < min_image_size(model):
        logger.warning(
            "--image_size %d is below what %s accepts; images are resized up to %d.",
            image_size,
            model.config.architecture,
            min_image_size(model),
        )
        image_size = min_image_size(model)
    base_model_id, base_model_license = pretrained_source(model, model_args.model)
    record_input_config(model, image_size)
    preprocessing = Preprocessing.for_model(model.timm_model, image_size, data_args.augmentation)

    # 2. Strategy, checked against the epoch count and the data pipeline.
    layout = BlockLayout.from_model(model)
    num_epochs = math.ceil(training_args.num_train_epochs)
    strategy = build_strategy(model_args.strategy, config, layout, num_epochs)
    check_run_length(strategy, training_args.num_train_epochs, training_args.max_steps)
    alike = coinciding_strategies(strategy)
    if alike:
        logger.warning(
            "At %d epochs, --strategy %s trains exactly as %s (the same blocks frozen in every epoch). Raise "
            "--num_train_epochs to tell them apart.",
            num_epochs,
            strategy.name,
            " and ".join(alike),
        )
    model = strategy.prepare_model(model)
    if training_args.channels_last:
        model.to(memory_format=torch.channels_last)
    feature_epochs = 0
    if data_args.cache_features:
        feature_epochs = check_feature_cache(strategy, model, data_args.augmentation, training_args)
    seed, cached, num_proc = training_args.seed, data_args.cache_images, training_args.dataloader_num_workers
    train_set, validation_set, test_set = image_datasets(splits, preprocessing, seed, cached, num_proc)
    train_rows, validation_rows, takes_features = train_set, validation_set, nullcontext()
    data_pipeline = "decoded" if data_args.cache_images else "pil"
    if feature_epochs:
        # The frozen backbone runs once per image, as evaluation sees it (unaugmented); the head trains (and is
        # validated) on the stored features.
        model.to(training_args.device)
        unaugmented_train, _, _ = image_datasets(splits, replace(preprocessing, augmentation="none"), seed, cached)
        train_rows, validation_rows, takes_features = on_stored_features(
            model,
            unaugmented_train,
            (train_set, validation_set),
            feature_epochs,
            num_epochs,
            training_args.per_device_eval_batch_size,
        )
        if feature_epochs < num_epochs:
            logger.info(
                "The first %d of %d epochs train the head on stored features (of unaugmented images), the rest on "
                "images.",
                feature_epochs,
                num_epochs,
            )
        data_pipeline = "features" if feature_epochs == num_epochs else f"features, then {data_pipeline}"

    # 3. Train (or resume); the best epoch is chosen on validation.
    identity = {
        "strategy": model_args.strategy,
        "model": model_args.model,
        "dataset": dataset_label(data_args),
        "dataset_config": data_args.dataset_config,
        "class_names": splits.class_names,
        "strategy_config": strategy.settings(),
        "learning_rate": training_args.learning_rate,
        "num_train_epochs": training_args.num_train_epochs,
        "image_size": image_size,
        "augmentation": data_args.augmentation,
        "class_weights": data_args.class_weights,
        "data_pipeline": data_pipeline,
        "split_settings": {
            name: getattr(data_args, name)
            for name in ("val_fraction", "max_train_samples", "min_validation_size", "max_eval_samples")
        },
    }
    # `identity` goes into results.json as it is; a checkpoint must match it and the optimisation settings to continue
    # this run. A checkpoint of another run is refused here, before anything is written.
    checkpoint_identity = {
        **identity,
        "optimisation": {
            name: value.value if isinstance(value, Enum) else value  # as JSON keeps it
            for name in OPTIMISATION_SETTINGS
            for value in [getattr(training_args, name)]
        },
    }
    saved_state = load_checkpoint_state(checkpoint, checkpoint_identity) if checkpoint else None
    loss = None
    if data_args.class_weights == "auto":
        weights = inverse_frequency_weights(np.asarray(splits.train[splits.label_column]), len(splits.class_names))
        loss = weighted_cross_entropy(weights)
    trainer = StrategyTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=validation_rows,
        compute_metrics=metrics_lib.metrics_for_trainer(),
        compute_loss_func=loss,
        callbacks=[EarlyStoppingCallback(training_args.early_stopping_patience)]
        if training_args.early_stopping_patience
        else None,
        strategy=strategy,
        run_identity=checkpoint_identity,
    )
    use_epoch_log(trainer, str(output_dir))
    if saved_state is not None:
        trainer.restore_strategy_state(saved_state)
    if is_finished_run(output_dir) and trainer.is_world_process_zero():  # --overwrite_output_dir, checked above
        discard_finished_run(output_dir)  # now, once every check has passed: bad input loses nothing
    with takes_features:
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    # 4. Evaluate the chosen model: validation, then the test split once. A binary task's decision threshold is
    # chosen on validation (Youden's J) and only applied to test.
    metric = metrics_lib.load_metric()
    validation_prediction = trainer.predict(validation_set)
    binary = {}
    if len(splits.class_names) == 2:
        threshold = metrics_lib.youden_threshold(
            validation_prediction.predictions, validation_prediction.label_ids, positive_label
        )
        binary = {"positive_label": positive_label, "threshold": threshold}
    validation_metrics = metrics_lib.compute_classification_metrics(
        validation_prediction.predictions, validation_prediction.label_ids, per_class=True, metric=metric, **binary
    )
    test_metrics = test_outputs = None
    if test_set is not None:
        test_metrics, test_outputs = score_test_split(trainer.predict(test_set), binary, training_args, metric)

    result = RunResult(
        **identity,
        modality=data_args.modality,
        dataset_id=data_args.dataset_id,
        base_model_id=model_args.base_model_id or base_model_id,
        base_model_license=base_model_license,
        architecture=model.config.architecture,
        validation_source=splits.validation_source,
        num_examples={"train": len(train_set), "validation": len(validation_set), "test": len(test_set or [])},
        seed=training_args.seed,
        mixed_precision="bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        channels_last=training_args.channels_last,
        positive_class=splits.class_names[positive_label] if binary else None,
        validation=validation_metrics,
        test=test_metrics,
        test_outputs=test_outputs,
        best_checkpoint=trainer.state.best_model_checkpoint,
        history=epoch_history(trainer.state.log_history, trainer.trainable_per_epoch),
        strategy_state=strategy.state_dict(),
        train_runtime_s=train_output.metrics["train_runtime"],
        environment=environment(training_args.device),
    )

    # 5. Save: model and figures first, results.json last (its presence marks a finished run); then push.
    if trainer.is_world_process_zero():
        if training_args.save_model:
            save_model_atomic(strategy.export_model(trainer.model), output_dir)
        run_figures(result, output_dir)
        result.save(output_dir)
        if push_to:
            result.pushed_to = push_model(output_dir, push_to, private=training_args.hub_private_repo)
            result.save(output_dir)  # where it went; the copy pushed says null
    return result


def dataset_label(data_args: DataArguments) -> str:
    """How results.json names the dataset: `--dataset` as given, or the bundled default's name."""
    return data_args.dataset or "bundled:breastmnist"


def run_splits(data_args: DataArguments, seed: int) -> ImageClassificationSplits:
    """A run's splits: the same rows for the same data arguments and seed, in the run and in a later test of it."""
    return load_splits(
        data_args.dataset,
        data_args.dataset_config,
        data_args.image_column,
        data_args.label_column,
        data_args.val_fraction,
        data_args.max_train_samples,
        seed=seed,
        min_validation_size=data_args.min_validation_size,
        max_eval_samples=data_args.max_eval_samples,
    )


def score_test_split(
    prediction: PredictionOutput,
    binary: dict[str, Any],
    training_args: TrainingArguments,
    metric: evaluate.EvaluationModule | None = None,
) -> tuple[dict[str, Any], dict[str, list]]:
    """The test split's metrics (at a binary task's validation threshold in `binary`, with bootstrap intervals
    seeded by the run's seed) and its per-image outputs."""
    metrics = metrics_lib.compute_classification_metrics(
        prediction.predictions,
        prediction.label_ids,
        per_class=True,
        metric=metric,
        **binary,
        bootstrap_resamples=training_args.bootstrap_resamples,
        seed=training_args.seed,
    )
    return metrics, metrics_lib.per_image_outputs(prediction.predictions, prediction.label_ids)


def positive_label_of(positive_class: str | None, class_names: list[str]) -> int:
    """The label sensitivity is measured on: --positive_class by name, else label 1."""
    if positive_class is None:
        return 1
    if len(class_names) != 2:
        raise MedftError(f"--positive_class applies to binary tasks; this dataset has {len(class_names)} classes.")
    if positive_class not in class_names:
        raise MedftError(f"--positive_class {positive_class}: not a class of this dataset ({', '.join(class_names)}).")
    return class_names.index(positive_class)


def check_strategy_flags(strategy: str, configs: list) -> None:
    """Refuse a flag of another strategy (`--strategy ft --lp_epochs 3`): the run would ignore it without a word.
    Only for a command line or recipe file: a grid's or a search's flags are shared by every strategy they run."""
    settings = {name: {f.name for f in fields(cls.config_class)} for name, cls in STRATEGIES.items()}
    foreign = {}
    for config in configs:
        defaults = type(config)()
        for name in (f.name for f in fields(config) if f.name not in settings[strategy]):
            if getattr(config, name) != getattr(defaults, name):
                foreign[name] = [owner for owner, names in settings.items() if name in names]
    if foreign:
        flags = ", ".join(f"--{name} ({' and '.join(owners)})" for name, owners in sorted(foreign.items()))
        raise MedftError(f"{flags}: not settings of --strategy {strategy}, which would ignore them. Drop them or "
                         "choose their strategy.")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    transformers.utils.logging.set_verbosity_warning()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with exit_on_error():
        model_args, data_args, strategy_configs, training_args = parse_args(argv)
        check_strategy_flags(model_args.strategy, strategy_configs)
        if training_args.output_dir in (None, "trainer_output"):
            training_args.output_dir = f"outputs/{model_args.strategy}"
        result = run(model_args, data_args, strategy_configs, training_args)
    metrics = result.metrics
    print(
        f"{result.strategy}: {result.split} balanced accuracy {metrics['balanced_accuracy']:.4f}, AUROC "
        f"{metrics['auroc']:.4f}; saved to {training_args.output_dir}"
    )


if __name__ == "__main__":
    main()
