"""Publishing: a fine-tuned model with its model card, or a study's results as a dataset repo, to the Hub.

The token comes from where `huggingface_hub` looks (`HF_TOKEN`, `hf auth login`) and is never printed, logged or
written anywhere. Pushes are retried; a push that still fails leaves every local file as it was and says how to
push later.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitOperationAdd,
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import (
    filter_repo_objects,
    httpx,  # the HTTP library the client uses
    validate_repo_id,
)

from .errors import MedftError, exit_on_error
from .results import CALIBRATION, METRICS, RESULTS_FILE, RunResult, run_files
from .strategies import STRATEGIES

PROJECT = "medft-hf"
# A study repo's files besides its card, which is made from report.md at push time, not written into the folder.
STUDY_FILES = [
    "runs.parquet",
    "runs.csv",
    "summary.csv",
    "summary.tex",
    "vs_ft.csv",
    "claims.json",
    "*.png",
]


class PushError(MedftError):
    """The push did not go through; the local files are intact."""

    exit_code = 3


def check_push_ready(repo_id: str | None) -> None:
    """Fail before training, not after: a token must be available and the repo id valid."""
    if not repo_id:
        raise MedftError("--push_to_hub needs --hub_model_id NAME (e.g. your-name/densenet121-lpft-chest-xray).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise MedftError(f"--hub_model_id {repo_id}: not a valid repo id ({error}). Use 'namespace/name'.") from error
    if not get_token():
        raise MedftError(
            "--push_to_hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token), "
            "or drop --push_to_hub and push later with `medft-push model DIR --repo_id NAME`."
        )


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id rather than a local folder."""
    if not name or Path(name).exists() or name.startswith((".", "/", "bundled:")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_name(name: str | None, hub_id: str | None) -> str | None:
    """What the Hub should see for a model or dataset: its Hub id (given, or the name itself when it is one),
    else only the folder's name, never a local path."""
    if hub_id:
        return hub_id
    if name is None or is_hub_id(name):
        return name
    return Path(name).name


def publishable(result: RunResult) -> RunResult:
    """The record as it is pushed: Hub ids or bare names instead of local paths."""
    return replace(
        result,
        model=hub_name(result.model, result.base_model_id),
        dataset=hub_name(result.dataset, result.dataset_id),
        best_checkpoint=Path(result.best_checkpoint).name if result.best_checkpoint else None,
    )


def _evaluation_note(split: str, validation_source: str) -> str:
    if split == "test":
        return (
            f"The best epoch was chosen on the validation split ({validation_source}); the test split was "
            "evaluated once."
        )
    return (
        f"This dataset has no test split: the scores above are on the validation split ({validation_source}) that "
        "also chose the best epoch, so they are optimistic. Test the model on held-out data before trusting them."
    )


def model_card(result: RunResult, repo_id: str, license: str | None = None) -> ModelCard:
    """The card of a fine-tuned model: metadata the Hub indexes (model-index = results.json's finite test metrics)
    and a body saying what it is, how it was trained, how to load it and what it is not for."""
    strategy = STRATEGIES[result.strategy]
    split, metrics = result.split, result.metrics
    result = publishable(result)
    base_model = result.model if is_hub_id(result.model) else None
    license = license or result.base_model_license or "other"
    finite = [m for m in METRICS if isinstance(metrics.get(m), float) and math.isfinite(metrics[m])]
    missing = [METRICS[m] for m in METRICS if m not in finite]
    precision = result.mixed_precision + (", channels-last" if result.channels_last else "")
    data = ModelCardData(
        base_model=base_model,
        datasets=[result.dataset] if is_hub_id(result.dataset) else None,
        license=license,
        license_name="see-base-model-and-dataset" if license == "other" else None,
        license_link=f"https://huggingface.co/{base_model}" if license == "other" and base_model else None,
        library_name="timm",
        pipeline_tag="image-classification",
        tags=["medical-imaging", *filter(None, [result.modality]), result.strategy, PROJECT],
        model_name=repo_id.split("/")[-1],
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type=result.dataset,
                dataset_name=result.dataset_name,
                dataset_config=result.dataset_config,
                dataset_split=split,
                metric_type=metric,
                metric_name=METRICS[metric],
                metric_value=metrics[metric],
            )
            for metric in finite
        ],
    )
    not_finite = (
        f"\n{', '.join(missing)}: not defined on this split (e.g. a class is absent), so left out.\n" if missing else ""
    )
    clinical = _clinical_rows(metrics, result.positive_class)
    per_class = metrics["per_class"]
    class_rows = "\n".join(
        f"| {name} | {per_class['precision'][i]:.3f} | {per_class['recall'][i]:.3f} | {per_class['f1'][i]:.3f} "
        f"| {per_class['support'][i]} |"
        for i, name in enumerate(result.class_names)
    )
    doc = (strategy.__doc__ or "").strip().splitlines()[0]
    body = f"""
# {repo_id.split("/")[-1]}

{result.architecture} fine-tuned on **{result.dataset_name}** ({", ".join(result.class_names)}) with
**{result.strategy}**: {strategy.summary}. {doc} ({strategy.reference}.) Trained with
[{PROJECT}](https://github.com/medft-hf/medft-hf), which implements the strategies compared by Davila, Colan &
Hasegawa (2024), "Comparison of fine-tuning strategies for transfer learning in medical image classification",
arXiv 2406.10050.

## Results ({split} split, {result.num_examples.get(split, "?")} images)

| metric | value |
|---|---|
{chr(10).join(f"| {METRICS[m]} | {metrics[m]:.4f}{_interval(metrics, m)} |" for m in finite)}
{clinical}{not_finite}

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{class_rows}

{_evaluation_note(split, result.validation_source)}
Figures: `training_curves.png`, `confusion_matrix.png`; everything above: `results.json`.

## Training set-up

- Backbone: `{result.model}` ({result.architecture}), ImageNet-pretrained, new classification head.
- Strategy settings: `{json.dumps({k: v for k, v in result.strategy_config.items() if v is not None})}`.
- Training augmentation: `{result.augmentation}` (see the medft-hf README).
- Image size {result.image_size} px, {result.num_train_epochs:g} epochs, learning rate
  {result.learning_rate:g}, seed {result.seed}, mixed precision: {precision}.
- Hardware: {result.environment["device"]}; training time {result.train_runtime_s:.0f} s.
{_selection(result.selection)}
## How to use

```python
from transformers import pipeline
classifier = pipeline("image-classification", model="{repo_id}")
classifier("image.png")
```

```python
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained("{repo_id}")
```

```python
import timm
model = timm.create_model("hf-hub:{repo_id}", pretrained=True)
config = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**config)
```

## Intended use and limitations

For research on transfer learning in medical imaging only. **This is not a medical device** and must not be used
for diagnosis, triage or any clinical decision. It was trained on one dataset, whose patients, scanners and
labelling conventions need not resemble yours; its scores say nothing about performance on another population.
"""
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)


def _selection(selection: dict[str, Any] | None) -> str:
    """The card's account of a configuration chosen by `medft-select` (nothing for a run trained by hand)."""
    if not selection:
        return ""
    return f"""
## How this configuration was chosen

By `medft-select`, on the validation split only: {selection["trials"]} configurations (strategy, learning rate,
augmentation and each strategy's own settings) were tried with successive halving within a budget of
{selection["budget"]}; chosen: {selection["reason"]}
"""


def _interval(metrics: dict[str, Any], name: str) -> str:
    interval = (metrics.get("intervals") or {}).get(name)
    if not interval or not all(math.isfinite(v) for v in interval):
        return ""
    return f" (95% CI {interval[0]:.4f}–{interval[1]:.4f})"


def _clinical_rows(metrics: dict[str, Any], positive: str | None) -> str:
    """Calibration rows, and for a binary task sensitivity/specificity at the argmax and at the threshold chosen
    on validation."""
    rows = []
    rows += [f"| {title} | {metrics[name]:.4f} |" for name, title in CALIBRATION.items() if name in metrics]
    if "sensitivity" in metrics:
        rows.append(f"| Sensitivity ({positive}), argmax | {metrics['sensitivity']:.4f} |")
        rows.append(f"| Specificity, argmax | {metrics['specificity']:.4f} |")
        if "at_threshold" in metrics:
            at = metrics["at_threshold"]
            rows.append(f"| Sensitivity at P({positive}) ≥ {at['threshold']:.3f} (chosen on validation) | "
                        f"{at['sensitivity']:.4f} |")  # fmt: skip
            rows.append(f"| Specificity at that threshold | {at['specificity']:.4f} |")
    return "\n".join(rows) + ("\n" if rows else "")


def _retrying(action, what: str, local: Path, later: str, attempts: int = 3, delay_s: float = 2.0):
    """Run `action()`, retrying server errors (5xx, 429) and network failures with exponential back-off; a refusal
    (4xx) or the last failure ends with where the files are and how to push them later."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status is not None and status < 500 and status != 429:
                raise PushError(f"{what} was refused ({status}: {_short(error)}). The files are safe in {local}; "
                                 f"fix the cause, then: {later}") from error  # fmt: skip
            last: Exception = error
        except (httpx.TransportError, OSError) as error:  # connection refused, reset, timed out
            last = error
        except RuntimeError as error:  # hf_xet (the Xet upload path) reports its failures as RuntimeError
            last = error
        if attempt < attempts:
            time.sleep(delay_s * 2 ** (attempt - 1))
    raise PushError(
        f"{what} failed after {attempts} attempts ({type(last).__name__}: {_short(last)}). "
        f"The files are safe in {local}. Push them later with: {later}"
    ) from last


def _short(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def push_model(output_dir: str | Path, repo_id: str, private: bool | None = None, license: str | None = None,
               delay_s: float = 2.0) -> str:  # fmt: skip
    """Push a finished run (model, results.json, figures, and a model card written now) to a model repo."""
    output_dir = Path(output_dir)
    results_file = output_dir / RESULTS_FILE
    if not results_file.is_file():
        raise MedftError(f"{output_dir}: no {RESULTS_FILE}; only a finished run can be pushed.")
    check_push_ready(repo_id)
    result = RunResult.load(results_file)
    model_card(result, repo_id, license).save(output_dir / "README.md")
    api = HfApi()
    later = f"medft-push model {output_dir} --repo_id {repo_id}"
    # results.json goes up without local paths; every other file as it is on disk.
    operations = [
        CommitOperationAdd(path_in_repo=file.name, path_or_fileobj=file)
        for file in run_files(output_dir)
        if file.name != RESULTS_FILE
    ]
    published = json.dumps(publishable(result).to_dict(), indent=2, allow_nan=True).encode()
    operations.append(CommitOperationAdd(path_in_repo=RESULTS_FILE, path_or_fileobj=published))

    def push() -> str:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=f"{result.strategy} on {result.dataset_name} ({PROJECT})",
        )
        return commit.commit_url

    return _retrying(push, f"pushing {output_dir} to {repo_id}", output_dir, later, delay_s=delay_s)


def study_card(report_dir: Path, repo_id: str) -> DatasetCard:
    data = DatasetCardData(
        license="cc-by-4.0",
        pretty_name=f"{repo_id.split('/')[-1]}: fine-tuning strategies compared",
        tags=["medical-imaging", "fine-tuning", PROJECT],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "runs.parquet"}]}],
    )
    body = (report_dir / "report.md").read_text()
    return DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)


def push_study(report_dir: str | Path, repo_id: str, private: bool | None = None, delay_s: float = 2.0) -> str:
    """Push a study report (from `medft-report`) as a dataset repo: the tidy table, the report as its card, figures."""
    report_dir = Path(report_dir)
    if not (report_dir / "report.md").is_file() or not (report_dir / "runs.parquet").is_file():
        raise MedftError(f"{report_dir}: not a study report (run `medft-report RESULTS --output_dir {report_dir}`).")
    check_push_ready(repo_id)
    files = filter_repo_objects(sorted(path.name for path in report_dir.iterdir() if path.is_file()),
                                allow_patterns=STUDY_FILES)  # fmt: skip
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=report_dir / name) for name in files]
    card = str(study_card(report_dir, repo_id)).encode()
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    api = HfApi()
    later = f"medft-push study {report_dir} --repo_id {repo_id}"

    def push() -> str:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_id,
            repo_type="dataset",
            operations=operations,
            commit_message=f"Study report ({PROJECT})",
        )
        return commit.commit_url

    return _retrying(push, f"pushing {report_dir} to {repo_id}", report_dir, later, delay_s=delay_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="medft-push", description="Push a finished run or a study report to the Hub.")
    sub = parser.add_subparsers(dest="kind", required=True)
    model = sub.add_parser("model", help="a train.py output folder, as a model repo with a model card")
    model.add_argument("folder")
    model.add_argument("--license", help="the model card's license (default: the backbone's, else other)")
    study = sub.add_parser("study", help="a medft-report folder, as a dataset repo")
    study.add_argument("folder")
    for command in (model, study):
        command.add_argument("--repo_id", required=True)
        command.add_argument("--private", action="store_true", default=None)
    args = parser.parse_args(argv)
    with exit_on_error():
        if args.kind == "model":
            url = push_model(args.folder, args.repo_id, args.private, args.license)
        else:
            url = push_study(args.folder, args.repo_id, args.private)
    print(f"pushed: {url}")


if __name__ == "__main__":
    main()
