"""Testing a run that left the test split unevaluated (`--skip_test`: a search trial) without training it again.

Its saved model meets the test split exactly as train.py would have tested it at the end of that run: the same rows
(the run's data arguments and seed), the same batches, a binary task's decision threshold from the run's own
validation, the bootstrap seeded by the run's seed. The tested run is written to a new folder, a complete run of its
own (model, figures, `results.json` last), whose `trained_in` names the run it came from. medft-select's first final
run is so the chosen trial's own full-length run, tested once it has been chosen, instead of the same run trained
twice.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import transformers

from .cache import split_rows
from .data import Preprocessing
from .errors import MedftError
from .figures import run_figures
from .modeling import load_model
from .results import RunResult, is_finished_run
from .train import parse_dict, positive_label_of, run_splits, score_test_split

MODEL_FILES = ("config.json", "model.safetensors")


def testable_later(folder: Path) -> bool:
    """A finished run that left the test split unevaluated and kept its model: what `evaluate_finished_run` takes."""
    return (
        is_finished_run(folder)
        and RunResult.load(folder).test is None
        and all((folder / name).is_file() for name in MODEL_FILES)
    )


def evaluate_finished_run(trained: Path, output_dir: Path, flags: dict[str, Any]) -> RunResult:
    """The finished, untested run in `trained`, tested into `output_dir`; `flags` are the train.py arguments that
    run was made with (`skip_test` aside)."""
    run = RunResult.load(trained)
    if run.test is not None:
        raise MedftError(f"{trained}: this run has been tested already; its results.json holds the test metrics.")
    missing = [name for name in MODEL_FILES if not (trained / name).is_file()]
    if missing:
        raise MedftError(
            f"{trained}: no saved model ({', '.join(missing)} missing: the run had --save_model false), so it cannot "
            "be tested without training it again."
        )
    _, data_args, _, training_args = parse_dict({**flags, "skip_test": False, "output_dir": str(output_dir)})
    given = {
        "dataset": data_args.dataset or run.dataset,
        "dataset_config": data_args.dataset_config,
        "split_settings": {name: getattr(data_args, name) for name in run.split_settings},
        "seed": training_args.seed,
    }
    mismatches = [f"{name}: run {getattr(run, name)!r}, given {value!r}" for name, value in given.items()
                  if value != getattr(run, name)]  # fmt: skip
    if mismatches:
        raise MedftError(f"{trained} was made with other data settings ({'; '.join(mismatches)}).")
    splits = run_splits(data_args, training_args.seed)
    if splits.test is None or splits.class_names != run.class_names:
        raise MedftError(f"--dataset {data_args.dataset}: no test split with {trained}'s classes to test it on.")
    model = load_model(str(trained), splits.class_names)
    preprocessing = Preprocessing.for_model(model.timm_model, run.image_size, run.augmentation)
    test_set = split_rows(splits, "test", preprocessing, cached=data_args.cache_images)

    binary = {}
    if len(splits.class_names) == 2:
        positive_label = positive_label_of(run.positive_class, splits.class_names)
        binary = {"positive_label": positive_label, "threshold": run.validation["at_threshold"]["threshold"]}
    # Prediction only: the batches and device of the run's own evaluation, no training, per-epoch evaluation or save.
    predicting = replace(training_args, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    prediction = transformers.Trainer(model=model, args=predicting).predict(test_set)
    test, test_outputs = score_test_split(prediction, binary, training_args)
    tested = replace(
        run,
        test=test,
        test_outputs=test_outputs,
        num_examples={**run.num_examples, "test": len(test_set)},
        trained_in=os.path.relpath(trained, output_dir),
    )
    # The model first, results.json last: a folder cut off before it is not taken for a finished run.
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(trained / name, output_dir / name)
    run_figures(tested, output_dir)
    tested.save(output_dir)
    return tested
