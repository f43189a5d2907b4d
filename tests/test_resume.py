"""Resuming any strategy from a checkpoint continues the same run, bit for bit on the CPU and, with deterministic
kernels, on a GPU; bad resumes are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_trainer
from test_train import ROOT, train

from medft_hf.checkpoints import STATE_FILE, load_checkpoint_state
from medft_hf.errors import MedftError

# 48 training images, batches of 16: 3 steps per epoch, 9 in all. Step 4 is inside epoch 1 (0-based): inside
# LP-FT's fine-tuning phase, inside the second gradual-unfreezing stage, after Auto-RGN's epoch-1 measurement.
FLAGS = {"lpft": {"lp_epochs": 1}, "gu_lf": {"unfreeze_every": 1.0}, "gu_fl": {"unfreeze_every": 1.0}}
CASES = [(name, 4) for name in ("ft", "lp", "lpft", "gu_lf", "gu_fl", "l1sp", "l2sp", "auto_rgn")]
CASES += [("auto_rgn", 3), ("lpft", 3), ("gu_lf", 6)]  # at epoch boundaries
STRATEGY_NAMES = sorted({name for name, _ in CASES})


def losses(trainer, after_step: int) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e and e["step"] > after_step]


@pytest.mark.parametrize(
    ("strategy", "stop", "cached"),
    [(*case, False) for case in CASES] + [(name, 4, True) for name in STRATEGY_NAMES],
)
def test_resume_continues_bit_identically(strategy, stop, cached, device, tiny_model, tiny_dataset, tmp_path):
    """Through the PIL pipeline and through the decoded-image cache (train.py's default)."""
    settings = {"epochs": 3, "save_strategy": "steps", "save_steps": stop, "save_total_limit": None, "cached": cached}
    settings.update(device)
    settings.update(logging_strategy="steps", logging_steps=1)
    settings.update(FLAGS.get(strategy, {}))
    full, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path / "full", **settings)
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{stop}"
    saved = load_checkpoint_state(checkpoint, full.run_identity)

    resumed, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path / "resumed", **settings)
    resumed.restore_strategy_state(saved)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), f"{name} differs after resuming"
    assert losses(resumed, stop) == losses(full, stop)
    assert len(losses(full, stop)) == 9 - stop
    assert resumed.trainable_per_epoch == full.trainable_per_epoch


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_two_runs_with_one_seed_on_the_decoded_cache_are_bit_identical(
    strategy, device, tiny_model, tiny_dataset, tmp_path
):
    settings = {"epochs": 2, "cached": True, **device, **FLAGS.get(strategy, {})}
    first, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path / "first", **settings)
    first.train()
    second, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path / "second", **settings)
    second.train()
    weights = second.model.state_dict()
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), f"{name} differs between two runs with one seed"
    assert first.state.log_history[-1]["train_loss"] == second.state.log_history[-1]["train_loss"]


def test_l2sp_anchor_after_resume_is_the_pretrained_weights(tiny_model, tiny_dataset, tmp_path):
    settings = {"epochs": 2, "save_strategy": "steps", "save_steps": 4, "save_total_limit": None}
    full, snaps = make_trainer("l2sp", tiny_model, tiny_dataset, tmp_path / "full", **settings)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    resumed, _ = make_trainer("l2sp", tiny_model, tiny_dataset, tmp_path / "resumed", **settings)
    resumed.restore_strategy_state(load_checkpoint_state(checkpoint, resumed.run_identity))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    from safetensors.torch import load_file

    at_checkpoint = load_file(checkpoint / "model.safetensors")
    for name, anchor in zip(resumed.strategy.anchored_names, resumed.strategy.anchor, strict=True):
        assert torch.equal(anchor, snaps.states[0][name]), "the anchor is the pretrained weight"
        saved = at_checkpoint[name.removeprefix("timm_model.")]
        assert not torch.equal(anchor, saved), "not the weight of the checkpoint resumed from"


@pytest.fixture(scope="module")
def run_with_checkpoints(tiny_model, tiny_dataset, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("with_checkpoints")
    train(tiny_model, tiny_dataset, output_dir, "--strategy", "lpft")
    return output_dir


def _listing(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--strategy", "ft"], r"strategy: checkpoint 'lpft', this run 'ft'"),
        (
            ["--dataset", "BUNDLED"],
            r"class_names: checkpoint \['benign', 'malignant', 'normal'\], this run \['malignant'",
        ),
        (["--model", "COPY"], r"model: checkpoint '.*', this run '.*model_copy'"),
        (["--lp_epochs", "2", "--num_train_epochs", "3"], r"num_train_epochs: checkpoint 2.0, this run 3.0"),
        (["--ft_learning_rate", "0.5"], r"strategy_config: checkpoint .*'ft_learning_rate': None.*0\.5"),
        (["--learning_rate", "0.01"], r"learning_rate: checkpoint 0.001, this run 0.01"),
        (["--max_train_samples", "30"], r"split_settings: checkpoint .*'max_train_samples': None.*30"),
        (["--cache_images", "false"], r"data_pipeline: checkpoint 'decoded', this run 'pil'"),
        (["--seed", "1"], r"optimisation: checkpoint .*'seed': 0,.*'seed': 1,"),
        (["--weight_decay", "0.5"], r"optimisation: checkpoint .*'weight_decay': 0.0001.*'weight_decay': 0.5"),
        (["--lr_scheduler_kwargs", '{"power": 2}'], r"optimisation: .*'lr_scheduler_kwargs': None.*\{'power': 2\}"),
        (["--channels_last", "true"], r"optimisation: checkpoint .*'channels_last': False.*'channels_last': True"),
    ],
)
def test_resuming_a_different_run_is_refused(change, message, run_with_checkpoints, tiny_model, tiny_dataset, tmp_path):
    checkpoint = next(run_with_checkpoints.glob("checkpoint-*"))
    model, dataset = tiny_model, tiny_dataset
    if change[1] == "COPY":
        model = tmp_path / "model_copy"
        shutil.copytree(tiny_model, model)
    if change[1] == "BUNDLED":
        dataset = None
    flags = ["--strategy", change[1]] if change[0] == "--strategy" else ["--strategy", "lpft"]
    if change[1] not in ("COPY", "BUNDLED") and change[0] != "--strategy":
        flags += change
    before = _listing(run_with_checkpoints)
    with pytest.raises(MedftError, match=message):
        train(model, dataset, run_with_checkpoints / "again", *flags, "--resume_from_checkpoint", str(checkpoint))
    assert _listing(run_with_checkpoints) == before, "nothing in the output folder changed"


def test_a_missing_or_foreign_checkpoint_is_refused(tiny_model, tiny_dataset, tmp_path):
    with pytest.raises(MedftError, match="no such folder"):
        train(tiny_model, tiny_dataset, tmp_path / "a", "--resume_from_checkpoint", str(tmp_path / "nope"))
    (tmp_path / "not_a_checkpoint").mkdir()
    with pytest.raises(MedftError, match="not a complete checkpoint"):
        train(tiny_model, tiny_dataset, tmp_path / "a", "--resume_from_checkpoint", str(tmp_path / "not_a_checkpoint"))
    with pytest.raises(MedftError, match="no complete checkpoint"):
        train(tiny_model, tiny_dataset, tmp_path / "a", "--resume_from_checkpoint", "true")


def test_sigkill_during_a_save_then_resume_skips_the_half_written_checkpoint(tiny_model, tiny_dataset, tmp_path):
    output_dir = tmp_path / "killed"
    command = [
        sys.executable, "train.py", "--strategy", "gu_lf", "--model", str(tiny_model), "--dataset", str(tiny_dataset),
        "--output_dir", str(output_dir), "--image_size", "32", "--per_device_train_batch_size", "16", "--use_cpu",
        "--num_train_epochs", "8", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "3",
        "--eval_strategy", "no", "--load_best_model_at_end", "false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def half_written() -> list[str]:
        return sorted(p.name for p in output_dir.glob("checkpoint-*") if not (p / STATE_FILE).exists())

    # A save of this tiny model takes milliseconds, so the kill may land just after one: try again (resuming, and
    # so also killing resumed runs) until a checkpoint is caught half-written.
    for attempt in range(6):
        resume = ["--resume_from_checkpoint", "true"] if attempt else []
        process = subprocess.Popen([*command, *resume], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if half_written() and any(output_dir.glob(f"checkpoint-*/{STATE_FILE}")):
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.0005)
            else:
                pytest.fail("the run ended before a save could be interrupted")
        finally:
            process.kill()
            process.wait()
        assert not (output_dir / "results.json").exists(), "a killed run does not look finished"
        if half_written():
            break
    else:
        pytest.fail("no kill landed inside a save in 6 attempts")
    caught = half_written()

    resumed = subprocess.run(
        [*command, "--resume_from_checkpoint", "true"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (output_dir / "results.json").exists()
    for name in caught:
        assert f"Skipping {output_dir / name}" in resumed.stderr


def test_a_checkpoint_is_checked_on_every_setting_it_records_and_older_ones_still_resume(tmp_path):
    """A checkpoint written before a setting joined the identity (the runs of a grid in progress) still resumes."""
    (tmp_path / STATE_FILE).write_text(json.dumps({"identity": {"strategy": "ft", "learning_rate": 0.001}}))
    now = {"strategy": "ft", "learning_rate": 0.001, "optimisation": {"seed": 1}}
    assert load_checkpoint_state(tmp_path, now)["identity"]["strategy"] == "ft"
    with pytest.raises(MedftError, match=r"learning_rate: checkpoint 0\.001, this run 0\.01"):
        load_checkpoint_state(tmp_path, {**now, "learning_rate": 0.01})
    # inside a group of settings too: a key the checkpoint lacks is not checked, one it has is
    (tmp_path / STATE_FILE).write_text(json.dumps({"identity": {"optimisation": {"seed": 1}}}))
    assert load_checkpoint_state(tmp_path, {"optimisation": {"seed": 1, "max_grad_norm": 1.0}})
    with pytest.raises(MedftError, match="optimisation: checkpoint"):
        load_checkpoint_state(tmp_path, {"optimisation": {"seed": 2, "max_grad_norm": 1.0}})
