"""End to end through `train.py`: outputs, loading them back three ways, bad input, mixed precision."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import SHARED, requires_shared, write_hub_dataset
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from medft_hf.errors import MedftError
from medft_hf.evaluation import can_test_later, evaluate_finished_run
from medft_hf.hub import model_card
from medft_hf.results import RunResult, epoch_history
from medft_hf.train import main as train_main
from medft_hf.train import parse_args, parse_dict, run
from medft_hf.trainer import StrategyTrainer

ROOT = Path(__file__).resolve().parents[1]


def train(
    model: Path, dataset: Path | str | None, output_dir: Path, *flags: str, device: dict[str, bool] | None = None
) -> RunResult:
    """train.py's `run` on the CPU, or with `device` (the fixture) where it says."""
    device_flags = [f"--{name}" for name, on in (device or {"use_cpu": True}).items() if on]
    argv = [
        "--model", str(model), "--output_dir", str(output_dir), "--image_size", "32",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--seed", "0", *device_flags, *flags,
    ]  # fmt: skip
    if dataset is not None:
        argv += ["--dataset", str(dataset)]
    return run(*parse_args(argv))


@pytest.fixture(scope="module")
def finished_run(tiny_model, tiny_dataset, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("run")
    return output_dir, train(tiny_model, tiny_dataset, output_dir, "--strategy", "lpft")


def test_results_json_has_the_promised_fields(finished_run):
    output_dir, _ = finished_run
    on_disk = json.loads((output_dir / "results.json").read_text())
    assert on_disk["strategy"] == "lpft" and on_disk["seed"] == 0
    assert on_disk["strategy_config"]["lp_epochs"] == 1, "the share the run used, not the default's None"
    for split in ("validation", "test"):
        assert {"accuracy", "balanced_accuracy", "macro_f1", "auroc"} <= set(on_disk[split])
    assert [row["epoch"] for row in on_disk["history"]] == [1, 2]
    lp, ft = on_disk["history"]
    assert lp["trainable_parameters"] < ft["trainable_parameters"], "LP phase trains the head only"
    assert {"train_loss", "validation"} <= set(lp)
    assert on_disk["train_runtime_s"] > 0
    assert on_disk["class_names"] == ["benign", "malignant", "normal"]
    assert on_disk["environment"]["device"].startswith("CPU"), "a --use_cpu run ran on the CPU, GPU or not"


def test_history_puts_each_log_in_the_epoch_it_came_from():
    """Logged by steps (epoch 1.33 is in the 2nd epoch) and with a fractional epoch count (2.5 is the 3rd)."""
    log = [{"loss": 1.0, "epoch": 0.5}, {"loss": 0.9, "epoch": 1.0}, {"eval_loss": 0.8, "eval_auroc": 0.6, "epoch": 1},
           {"loss": 0.7, "epoch": 1.33}, {"loss": 0.6, "epoch": 2.0}, {"eval_loss": 0.5, "eval_auroc": 0.7, "epoch": 2},
           {"loss": 0.4, "epoch": 2.5}, {"eval_loss": 0.3, "eval_auroc": 0.8, "epoch": 2.5}]  # fmt: skip
    rows = epoch_history(log, {0: 10, 1: 20, 2: 20})
    assert [(r["epoch"], r["train_loss"], r["validation"]["auroc"], r["trainable_parameters"]) for r in rows] == [
        (1, 0.9, 0.6, 10),
        (2, 0.6, 0.7, 20),
        (3, 0.4, 0.8, 20),
    ]


def test_results_json_keeps_each_test_images_probabilities_and_they_give_back_the_metrics(finished_run):
    from sklearn.metrics import roc_auc_score

    output_dir, _ = finished_run
    result = RunResult.load(output_dir)
    labels, probabilities = np.array(result.test_outputs["labels"]), np.array(result.test_outputs["probabilities"])
    assert labels.shape == (result.num_examples["test"],) and probabilities.shape == (labels.size, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)  # 6 significant digits
    rows = probabilities / probabilities.sum(axis=1, keepdims=True)  # sklearn wants sums of 1 to 1e-8
    auroc = roc_auc_score(labels, rows, multi_class="ovr", labels=[0, 1, 2])
    assert auroc == pytest.approx(result.test["auroc"], abs=2e-3)
    assert (probabilities.argmax(1) == labels).mean() == pytest.approx(result.test["accuracy"])


def test_results_json_is_the_typed_record_and_refuses_what_it_does_not_know(finished_run, tmp_path):
    output_dir, returned = finished_run
    loaded = RunResult.load(output_dir)
    as_json = json.dumps(loaded.to_dict())  # compared as JSON: an interval may be NaN, and NaN != NaN
    assert as_json == json.dumps(returned.to_dict())
    assert json.dumps(RunResult.from_dict(json.loads(as_json)).to_dict()) == as_json, "a JSON round trip is lossless"
    older = {k: v for k, v in loaded.to_dict().items() if k not in ("augmentation", "class_weights", "positive_class")}
    assert RunResult.from_dict(older).augmentation == "rrc", "a run from before --augmentation still loads"
    with pytest.raises(MedftError, match=r"unknown fields \['strategi'\]"):
        RunResult.from_dict({**loaded.to_dict(), "strategi": "ft"})
    with pytest.raises(MedftError, match="incomplete"):
        RunResult.from_dict({k: v for k, v in loaded.to_dict().items() if k != "strategy"})


def test_the_output_loads_three_ways_with_the_same_predictions(finished_run, tiny_dataset):
    output_dir, _ = finished_run
    image = Image.open(_first_test_image(tiny_dataset))

    hf_model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    assert hf_model.config.id2label == {0: "benign", 1: "malignant", 2: "normal"}
    timm_model = timm.create_model(f"local-dir:{output_dir}", pretrained=True).eval()
    config = timm.data.resolve_data_config(model=timm_model)
    assert config["input_size"] == (3, 32, 32), "the saved config records the training image size"
    pixels = timm.data.create_transform(**config)(image.convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(pixels).logits, timm_model(pixels))
        probabilities = hf_model(pixels).logits.softmax(-1)[0]

    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    predictions = classifier(image, top_k=3)
    assert {p["label"] for p in predictions} == {"benign", "malignant", "normal"}
    by_label = {p["label"]: p["score"] for p in predictions}
    for index, name in hf_model.config.id2label.items():
        assert by_label[name] == pytest.approx(probabilities[index].item(), abs=1e-4)


def _first_test_image(dataset_dir: Path) -> Path:
    split = datasets.load_dataset(str(dataset_dir), split="test")
    path = dataset_dir.parent / "first_test_image.png"
    split[0]["image"].save(path)
    return path


def test_a_finished_run_is_not_overwritten(finished_run, tiny_model, tiny_dataset):
    output_dir, _ = finished_run
    before = (output_dir / "model.safetensors").read_bytes()
    with pytest.raises(MedftError, match=r"finished run.*--overwrite_output_dir"):
        train(tiny_model, tiny_dataset, output_dir)
    assert (output_dir / "model.safetensors").read_bytes() == before


def test_overwriting_a_finished_run_discards_it_only_once_the_new_run_passed_its_checks(
    finished_run, tiny_model, tiny_dataset, tmp_path, monkeypatch
):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    before = (output_dir / "results.json").read_bytes()
    with pytest.raises(MedftError, match="no-such-dataset"):
        train(tiny_model, tmp_path / "no-such-dataset", output_dir, "--overwrite_output_dir")
    assert (output_dir / "results.json").read_bytes() == before, "bad input loses nothing"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(StrategyTrainer, "train", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_model, tiny_dataset, output_dir, "--overwrite_output_dir")
    assert not (output_dir / "results.json").exists(), "a run killed while training must not look finished"

    train(tiny_model, tiny_dataset, output_dir, "--overwrite_output_dir", "--save_model", "false")
    assert not (output_dir / "model.safetensors").exists(), "the old run's model beside the new run's record"
    assert (output_dir / "results.json").read_bytes() != before


def test_bf16_mixed_precision_trains_and_the_run_records_its_device(device, tiny_model, tiny_dataset, tmp_path):
    results = train(tiny_model, tiny_dataset, tmp_path, "--strategy", "l2sp", "--bf16", device=device)
    assert results.mixed_precision == "bf16"
    assert np.isfinite(results.history[-1]["train_loss"])
    on_gpu = not device["use_cpu"]
    assert results.environment["device"] == (
        torch.cuda.get_device_name(0) if on_gpu else f"CPU ({os.cpu_count()} cores)"
    )


def test_same_seed_gives_the_same_results(device, tiny_model, tiny_dataset, tmp_path):
    """On a GPU with --full_determinism too, through train.py's loader workers and pinned memory."""
    first = train(tiny_model, tiny_dataset, tmp_path / "a", "--strategy", "auto_rgn", device=device)
    second = train(tiny_model, tiny_dataset, tmp_path / "b", "--strategy", "auto_rgn", device=device)
    assert json.dumps(first.test) == json.dumps(second.test)  # as JSON: an undefined interval is NaN, NaN != NaN
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_full_determinism_ends_with_the_run(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """It is process-wide (torch, cuDNN, environment): the next run of a grid or search in this process must start
    from what the process had, not from the last run's --full_determinism."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.delenv("CUDA_LAUNCH_BLOCKING", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    train(tiny_model, tiny_dataset, tmp_path, "--strategy", "lp", "--num_train_epochs", "1", "--full_determinism")
    assert (
        (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before == (False, False)
    )
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and "CUDA_LAUNCH_BLOCKING" not in os.environ


def test_default_dataset_is_the_bundled_breastmnist(tiny_model, tmp_path):
    results = train(tiny_model, None, tmp_path, "--strategy", "lp", "--num_train_epochs", "1")
    assert results.class_names == ["malignant", "normal_or_benign"]
    assert results.num_examples == {"train": 546, "validation": 78, "test": 156}


def test_small_images_are_resized_up_to_the_architecture_minimum(tiny_model, tiny_dataset, tmp_path):
    results = train(tiny_model, tiny_dataset, tmp_path, "--image_size", "8", "--num_train_epochs", "1")
    assert results.image_size == 32


def test_channels_last_trains_the_same_run_up_to_float_rounding(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    formats = []  # when training starts: (any convolution weight out of the default layout, all channels-last)

    class Recording(StrategyTrainer):
        def train(self, *args, **kwargs):
            weights = [p for p in self.model.parameters() if p.dim() == 4]
            formats.append((any(not p.is_contiguous() for p in weights),
                            all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)))  # fmt: skip
            return super().train(*args, **kwargs)

    monkeypatch.setattr("medft_hf.train.StrategyTrainer", Recording)
    contiguous = train(tiny_model, tiny_dataset, tmp_path / "contiguous", "--strategy", "ft")
    channels_last = train(tiny_model, tiny_dataset, tmp_path / "channels_last", "--strategy", "ft", "--channels_last")
    assert formats == [(False, False), (True, True)]
    assert (contiguous.channels_last, channels_last.channels_last) == (False, True)
    assert "mixed precision: no, channels-last." in str(model_card(channels_last, "someone/model"))
    losses = [[epoch["train_loss"] for epoch in result.history] for result in (contiguous, channels_last)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_augmentation_is_recorded_and_none_trains_on_the_evaluation_transform(tiny_model, tiny_dataset, tmp_path):
    results = train(tiny_model, tiny_dataset, tmp_path, "--augmentation", "none", "--num_train_epochs", "1")
    assert results.augmentation == "none"
    assert json.loads((tmp_path / "results.json").read_text())["augmentation"] == "none"


def test_a_warning_names_the_strategies_a_short_schedule_makes_identical(tiny_model, tiny_dataset, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="medft_hf"):
        train(tiny_model, tiny_dataset, tmp_path / "a", "--strategy", "gu_lf", "--num_train_epochs", "2")
    assert "At 2 epochs, --strategy gu_lf trains exactly as gu_fl" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medft_hf"):
        train(tiny_model, tiny_dataset, tmp_path / "b", "--strategy", "gu_lf", "--num_train_epochs", "3")
    assert "trains exactly as" not in caplog.text


def test_torch_compile_runs_l2sp_end_to_end(device, tiny_model, tiny_dataset, tmp_path):
    """A compiled model names its parameters `_orig_mod.*`; the strategy must still find and anchor them. On the CPU
    the eager backend wraps the model exactly as inductor does, without minutes of C++ compilation; on a GPU,
    inductor itself, whose fused kernels round differently from eager ones (hence the looser tolerance)."""
    on_gpu = not device["use_cpu"]
    flags = ("--strategy", "l2sp", "--num_train_epochs", "1")
    backend = "inductor" if on_gpu else "eager"
    results = train(
        tiny_model, tiny_dataset, tmp_path, *flags, "--torch_compile", "--torch_compile_backend", backend, device=device
    )
    assert np.isfinite(results.history[0]["train_loss"])
    reference = train(tiny_model, tiny_dataset, tmp_path / "eager", *flags, device=device)
    tolerance = 1e-3 if on_gpu else 1e-4
    assert results.history[0]["train_loss"] == pytest.approx(reference.history[0]["train_loss"], rel=tolerance)


def test_report_to_tensorboard_logs_metrics_and_the_strategys_signals_offline(tiny_model, tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_model, tiny_dataset, tmp_path, "--strategy", "auto_rgn", "--rgn_batches", "1", "--report_to",
          "tensorboard")  # fmt: skip
    events = EventAccumulator(str(next((tmp_path / "runs").rglob("events.out.tfevents.*")).parent)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "eval/balanced_accuracy", "train/trainable_parameters", "train/rgn_factor_head"} <= tags
    assert [e.value for e in events.Scalars("train/rgn_factor_head")] == [1.0, 1.0], "the head at the base rate"


def test_all_arguments_can_come_from_a_yaml_or_json_file(tiny_model, tiny_dataset, tmp_path):
    recipe = {"strategy": "l2sp", "sp_alpha": 0.05, "model": str(tiny_model), "dataset": str(tiny_dataset),
              "image_size": 32, "num_train_epochs": 1, "use_cpu": True,
              "output_dir": str(tmp_path / "run")}  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "recipe.json").write_text(json.dumps({**recipe, "output_dir": str(tmp_path / "other")}))
    from_yaml = parse_args([str(tmp_path / "recipe.yaml")])
    from_json = parse_args([str(tmp_path / "recipe.json")])
    for model_args, _, configs, training_args in (from_yaml, from_json):
        assert model_args.strategy == "l2sp" and training_args.num_train_epochs == 1
        assert next(c for c in configs if hasattr(c, "sp_alpha")).sp_alpha == 0.05
    assert run(*from_yaml).strategy_config["sp_alpha"] == 0.05
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**recipe, "sp_alfa": 1}))
    with pytest.raises(MedftError, match=r"bad\.yaml: .*sp_alfa"):
        parse_args([str(tmp_path / "bad.yaml")])


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_help_lists_the_eight_strategies():
    result = _cli("--help")
    assert result.returncode == 0
    for name in ("ft", "lp", "lpft", "gu_lf", "gu_fl", "l1sp", "l2sp", "auto_rgn"):
        assert f"\n  {name} " in result.stdout


def test_help_shows_every_strategy_flag_with_its_default():
    from dataclasses import MISSING, fields

    from medft_hf.strategies import strategy_config_classes

    text = " ".join(_cli("--help").stdout.split())  # argparse wraps lines
    for config_class in strategy_config_classes():
        for spec in fields(config_class):
            after = text.split(f"--{spec.name.replace('_', '-')} ")[-1]
            entry = re.split(r" --[a-z_]+ [A-Z{]", after)[0]  # up to the next option and its metavar
            if spec.default not in (None, MISSING):
                assert f"(default: {spec.default})" in entry, spec.name
            else:
                assert "default" in entry, f"--{spec.name}'s help says what happens when it is not given"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "xx"], "invalid choice: 'xx'"),
        (["--dataset", "/nonexistent/data"], "--dataset /nonexistent/data: not found"),
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: could not be loaded"),
        (["--model", "timm/densenet121.tv_in1k"], "Hub is unreachable and no cached copy exists"),
        (["--strategy", "l2sp", "--sp_alpha", "-1"], "error: --sp_alpha -1.0: must be >= 0."),
        (["--strategy", "l1sp", "--sp_beta", "-0.1"], "error: --sp_beta -0.1: must be >= 0."),
        (["--strategy", "gu_lf", "--unfreeze_every", "0"], "error: --unfreeze_every 0.0: must be > 0."),
        (["--strategy", "gu_fl", "--unfreeze_every", "-2"], "error: --unfreeze_every -2.0: must be > 0."),
        (["--strategy", "auto_rgn", "--rgn_batches", "0"], "error: --rgn_batches 0: must be >= 1."),
        (["--strategy", "auto_rgn", "--rgn_head", "mine"], "argument --rgn_head/--rgn-head: invalid choice: 'mine'"),
        (["--strategy", "lpft", "--lp_epochs", "2", "--num_train_epochs", "2"], "error: --lp_epochs 2: must be below"),
        (["--strategy", "lpft", "--lp_epochs", "0"], "error: --lp_epochs 0: must be >= 1."),
        (["--strategy", "lpft", "--lp_share", "1"], "error: --lp_share 1.0: must be below 1, or LP-FT is only LP."),
        (
            ["--strategy", "ft", "--lp_epochs", "3", "--sp_alpha", "0.1"],
            "error: --lp_epochs (lpft), --sp_alpha (l1sp and l2sp): not settings of --strategy ft, which would ignore",
        ),
        (["--strategy", "lpft", "--num_train_epochs", "1"], "error: --strategy lpft needs at least 2 epochs"),
        (["--strategy", "lpft", "--ft_learning_rate=-1e-4"], "error: --ft_learning_rate -0.0001: must be > 0."),
        (["--strategy", "lpft", "--num_train_epochs", "2.5"], "error: --strategy lpft starts a new optimisation at"),
        (["--strategy", "lpft", "--max_steps", "3"], "give a whole number of --num_train_epochs and no --max_steps."),
        (
            ["--strategy", "lora", "--lora_dropout", "1.5"],
            "error: --lora_dropout 1.5: must be below 1 (a probability).",
        ),
        (["--augmentation", "heavy"], "argument --augmentation: invalid choice: 'heavy'"),
        (["--learning_rate", "-1"], "error: --learning_rate -1.0: must be > 0."),
        (["--per_device_train_batch_size", "0"], "error: --per_device_train_batch_size 0: must be >= 1."),
        (["--num_train_epochs", "0"], "error: --num_train_epochs 0.0: must be > 0."),
        (["--hub_strategy", "checkpoint"], "error: --hub_strategy: not used by medft-hf"),
        (["--hub_revision", "dev", "--hub_token", "x"], "error: --hub_token, --hub_revision: not used by medft-hf"),
        (["--positive_class", "cancer"], "error: --positive_class cancer: not a class of this dataset"),
        (["--class_weights", "inverse"], "argument --class_weights/--class-weights: invalid choice: 'inverse'"),
        (["--dataloader_num_workers", "-1"], "error: --dataloader_num_workers -1: must be >= 0."),
        (["--warmup_steps", "-0.1"], "error: --warmup_steps -0.1: must be >= 0."),
        (
            ["--dataloader_num_workers", "1", "--dataloader_persistent_workers"],
            "error: --dataloader_persistent_workers: a persistent worker keeps its copy of the training set at epoch 0",
        ),
        (["--push_to_hub", "--save_model", "false"], "error: --push_to_hub pushes the final model, which --save_mo"),
        (["--max_eval_samples", "0"], "error: --max_eval_samples 0: must be >= 1"),
        (["--learning_rte", "1e-3"], "error: unrecognized arguments: --learning_rte 1e-3"),
    ],
)
def test_bad_input_fails_with_one_clear_message(args, message, tmp_path, tiny_model, capsys):
    """train.py's `main` in this process (the script only calls it; the help test runs the script itself): any
    exception but the exit it makes of a bad input (a traceback) fails the test."""
    with pytest.raises(SystemExit) as exited:
        train_main(["--output_dir", str(tmp_path / "out"), "--model", str(tiny_model), *args])
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr
    assert not (tmp_path / "out").exists(), "nothing is written"


@requires_shared("hub", "tf_efficientnet_lite0.in1k_mli")
@requires_shared("data", "breastmnist")
def test_real_backbone_on_real_data_beats_the_majority_baseline(tmp_path):
    results = train(
        SHARED / "hub" / "tf_efficientnet_lite0.in1k_mli", SHARED / "data" / "breastmnist", tmp_path,
        "--strategy", "ft", "--image_size", "64", "--num_train_epochs", "5", "--learning_rate", "1e-3",
        "--per_device_train_batch_size", "32",
    )  # fmt: skip
    support = results.test["per_class"]["support"]
    majority = max(support) / sum(support)
    assert results.test["accuracy"] > majority
    assert results.test["balanced_accuracy"] > 0.6


@pytest.mark.parametrize(
    "data",
    [
        {"strategy": "lpft"},  # the tiny 3-class set
        # the bundled BreastMNIST: binary, so the decision threshold comes from the run's validation; with intervals
        {
            "strategy": "ft",
            "dataset": None,
            "num_train_epochs": 1,
            "max_train_samples": 64,
            "bootstrap_resamples": 50,
            "positive_class": "malignant",
        },
        {"strategy": "ft", "splits": {"train": 48, "validation": 12}},  # no test split: nothing to test
        {"strategy": "ft", "channels_last": True},  # predicted in the run's memory format again
    ],
)
def test_a_run_tested_after_the_fact_scores_what_it_would_have_scored_at_its_end(data, tiny_model, tiny_dataset,
                                                                                    tmp_path):  # fmt: skip
    """medft-select's first final run is its chosen trial's run (trained with --skip_test), tested later: it must
    be the run the same flags train and test in one go."""
    data = dict(data)
    if "splits" in data:
        data["dataset"] = str(write_hub_dataset(tmp_path / "data", data.pop("splits")))
    flags = {"model": str(tiny_model), "dataset": str(tiny_dataset), "image_size": 32, "num_train_epochs": 2,
             "per_device_train_batch_size": 16, "seed": 0, "use_cpu": True, **data}  # fmt: skip
    flags = {name: value for name, value in flags.items() if value is not None}
    reference = run(*parse_dict({**flags, "output_dir": str(tmp_path / "run")}))
    untested = run(*parse_dict({**flags, "output_dir": str(tmp_path / "trial"), "skip_test": True}))
    assert untested.test is None and untested.validation == reference.validation
    assert reference.channels_last == data.get("channels_last", False)

    assert can_test_later(tmp_path / "trial", parse_dict(flags)[-1])
    tested = evaluate_finished_run(tmp_path / "trial", flags, tmp_path / "tested")
    assert tested.test == reference.test and tested.test_outputs == reference.test_outputs
    assert tested.num_examples == reference.num_examples and tested.trained_in == "../trial"
    assert RunResult.load(tmp_path / "tested") == tested
    assert (tmp_path / "tested" / "model.safetensors").read_bytes() == (
        tmp_path / "trial" / "model.safetensors"
    ).read_bytes()
    assert (tmp_path / "tested" / "confusion_matrix.png").is_file()

    with pytest.raises(MedftError, match="tested already" if reference.test else "already the final copy of"):
        evaluate_finished_run(tmp_path / "tested", flags, tmp_path / "again")
    with pytest.raises(MedftError, match=r"other data settings .*seed: run 0, given 1"):
        evaluate_finished_run(tmp_path / "trial", {**flags, "seed": 1}, tmp_path / "again")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ({"strategy": "lp", "save_model": False}, "no saved model .*--save_model false"),
        ({"strategy": "lora"}, "--strategy lora saves another model than the one its training evaluated"),
    ],
)
def test_a_run_whose_evaluated_model_was_not_saved_cannot_be_tested_after_the_fact(
    extra, refusal, tiny_model, tiny_dataset, tmp_path
):
    flags = {"model": str(tiny_model), "dataset": str(tiny_dataset), "image_size": 32, "num_train_epochs": 1,
             "use_cpu": True, **extra}  # fmt: skip
    run(*parse_dict({**flags, "output_dir": str(tmp_path / "trial"), "skip_test": True}))
    assert not can_test_later(tmp_path / "trial", parse_dict(flags)[-1])
    with pytest.raises(MedftError, match=refusal):
        evaluate_finished_run(tmp_path / "trial", flags, tmp_path / "tested")
    assert not (tmp_path / "tested").exists()
