"""Testing a run that left the test split unevaluated (`--skip_test`: a search trial) without training it again.

Its saved model meets the test split as train.py would have tested it at the end of that run: the same rows (the
run's data arguments and seed), the same batches and device, a binary task's decision threshold from the run's own
validation, the bootstrap seeded by the run's seed. The tested run is written to a new folder, a complete run of its
own (model, figures, `results.json` last), whose `trained_in` names the run it came from. medft-select tests its
chosen trial's full-length run so, as its first final run, instead of training the same run a second time.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import transformers

from .cache import split_rows
from .data import ImageClassificationSplits, Preprocessing
from .errors import MedftError
from .figures import run_figures
from .modeling import load_model
from .results import MODEL_FILES, RunResult, is_finished_run
from .strategies import STRATEGIES
from .train import (
    DataArguments,
    MedftTrainingArguments,
    dataset_label,
    parse_dict,
    positive_label_of,
    run_splits,
    score_test_split,
)


def can_test_later(folder: Path, training_args: MedftTrainingArguments) -> bool:
    """Whether `evaluate_finished_run` takes the run in `folder`, made with `training_args`: finished, untested,
    its model kept, and that model the one its training evaluated (see `_why_not_testable`)."""
    return is_finished_run(folder) and _why_not_testable(folder, RunResult.load(folder), training_args) is None


def evaluate_finished_run(trained: Path, flags: dict[str, Any], output_dir: Path) -> RunResult:
    """The finished, untested run in `trained`, tested into `output_dir` (on a dataset without a test split, copied
    there as it stands); `flags` are the train.py arguments that run was made with (`skip_test` aside). Shaped like
    `study.train_resumably` once `trained` is bound."""
    run = RunResult.load(trained)
    _, data_args, _, training_args = parse_dict({**flags, "skip_test": False, "output_dir": str(output_dir)})
    refusal = _why_not_testable(trained, run, training_args)
    if refusal:
        raise MedftError(f"{trained}: {refusal}.")
    given = {
        "dataset": dataset_label(data_args),
        "dataset_config": data_args.dataset_config,
        "split_settings": {name: getattr(data_args, name) for name in run.split_settings},
        "seed": training_args.seed,
    }
    mismatches = [f"{name}: run {getattr(run, name)!r}, given {value!r}" for name, value in given.items()
                  if value != getattr(run, name)]  # fmt: skip
    # The test rows are read as the run read its images ("features, then decoded"; a "features" run does not say).
    pipeline = "decoded" if data_args.cache_images else "pil"
    if run.data_pipeline != "features" and not run.data_pipeline.endswith(pipeline):
        mismatches.append(f"data_pipeline: run {run.data_pipeline!r}, given {pipeline!r} (--cache_images)")
    if mismatches:
        raise MedftError(f"{trained} was made with other data settings ({'; '.join(mismatches)}).")
    splits = run_splits(data_args, training_args.seed)
    if splits.class_names != run.class_names:
        raise MedftError(
            f"--dataset {data_args.dataset}: classes {splits.class_names}, but {trained} was trained on "
            f"{run.class_names}."
        )
    # A dataset without a test split: the run is final as it stands, as train.py leaves a run on such data.
    tested = run if splits.test is None else _tested(run, trained, splits, data_args, training_args)
    tested = replace(tested, trained_in=os.path.relpath(trained, output_dir))
    # The model first, results.json last: a folder cut off before it is not taken for a finished run.
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(trained / name, output_dir / name)
    run_figures(tested, output_dir)
    tested.save(output_dir)
    return tested


def _tested(
    run: RunResult,
    trained: Path,
    splits: ImageClassificationSplits,
    data_args: DataArguments,
    training_args: MedftTrainingArguments,
) -> RunResult:
    """`run` with the test split's metrics and per-image outputs, scored as train.py scores them."""
    model = load_model(str(trained), splits.class_names)
    if run.channels_last:  # as the run predicted: convolutions round differently in the other memory format
        model.to(memory_format=torch.channels_last)
    preprocessing = Preprocessing.for_model(model.timm_model, run.image_size, run.augmentation)
    test_set = split_rows(
        splits, "test", preprocessing, cached=data_args.cache_images, num_proc=training_args.dataloader_num_workers
    )

    binary = {}
    if len(splits.class_names) == 2:
        positive_label = positive_label_of(run.positive_class, splits.class_names)
        binary = {"positive_label": positive_label, "threshold": run.validation["at_threshold"]["threshold"]}
    # Prediction only: the run's evaluation batches, device and precision; nothing trained, saved, pushed or logged.
    predicting = replace(
        training_args,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=False,
        report_to="none",
    )
    prediction = transformers.Trainer(model=model, args=predicting).predict(test_set)
    test, test_outputs = score_test_split(prediction, binary, training_args)
    return replace(run, test=test, test_outputs=test_outputs, num_examples={**run.num_examples, "test": len(test_set)})


def _why_not_testable(folder: Path, run: RunResult, training_args: MedftTrainingArguments) -> str | None:
    if run.test is not None:
        return "this run has been tested already; its results.json holds the test metrics"
    if run.trained_in is not None:
        return f"this run is already the final copy of {run.trained_in}"
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        return f"no saved model ({', '.join(missing)} missing: the run had --save_model false), so it cannot be tested"
    if not STRATEGIES[run.strategy].saves_the_model_it_evaluates():
        return f"--strategy {run.strategy} saves another model than the one its training evaluated; train it again"
    if training_args.torch_compile:
        return "trained with --torch_compile, which predicts slightly differently from the saved model; train it again"
    return None
