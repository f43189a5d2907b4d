"""Publishing to the Hub: the model card, the token and repo checks, and real pushes to a local Hub server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import datasets
import hub_server as hub_server_module
import pytest
import timm
import torch
from huggingface_hub import DatasetCard, HfApi, ModelCard
from test_train import ROOT, train
from transformers import AutoModelForImageClassification, pipeline

from medft_hf.errors import MedftError
from medft_hf.hub import PushError, check_push_ready, model_card, push_model, push_study
from medft_hf.results import RunResult


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "tokens"))


def test_push_needs_a_token_and_a_valid_repo_id(no_token, monkeypatch):
    with pytest.raises(MedftError, match="needs a Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        check_push_ready("someone/model")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(MedftError, match="not a valid repo id"):
        check_push_ready("bad//id")
    with pytest.raises(MedftError, match="needs --hub_model_id"):
        check_push_ready(None)


def test_train_with_push_but_no_token_fails_before_training(tiny_model, tiny_dataset, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "train.py", "--model", str(tiny_model), "--dataset", str(tiny_dataset),
         "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "me/tiny"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "needs a Hugging Face token" in result.stderr
    assert not (tmp_path / "out").exists()


def test_model_card_metadata_equals_results_json(tmp_path):
    metrics = {
        "accuracy": 0.8,
        "balanced_accuracy": 0.75,
        "macro_f1": 0.7,
        "auroc": 0.9,
        "per_class": {"precision": [0.9, 0.6], "recall": [0.8, 0.7], "f1": [0.85, 0.65], "support": [10, 5]},
    }
    results = {"strategy": "lpft", "model": "timm/densenet121.tv_in1k", "architecture": "densenet121",
               "dataset": "someone/chest-xray", "dataset_config": None, "modality": "X-ray",
               "class_names": ["normal", "pneumonia"], "validation_source": "validation",
               "num_examples": {"test": 15}, "strategy_config": {"lp_epochs": None}, "image_size": 224,
               "num_train_epochs": 10.0, "learning_rate": 1e-3, "seed": 0, "mixed_precision": "bf16",
               "environment": {"device": "CPU (2 cores)"}, "train_runtime_s": 12.0, "validation": metrics,
               "test": metrics, "history": []}  # fmt: skip
    card = model_card(RunResult.from_dict(results), "me/densenet121-lpft-chest-xray")
    card.save(tmp_path / "README.md")
    parsed = ModelCard.load(tmp_path / "README.md")
    assert parsed.data.base_model == "timm/densenet121.tv_in1k"
    assert parsed.data.datasets == ["someone/chest-xray"]
    assert parsed.data.pipeline_tag == "image-classification"
    assert parsed.data.license == "other", "no licence known for the weights"
    assert parsed.data.license_name and parsed.data.license_link == "https://huggingface.co/timm/densenet121.tv_in1k"
    assert {"medical-imaging", "X-ray", "lpft", "medft-hf"} <= set(parsed.data.tags)
    assert {r.metric_type: r.metric_value for r in parsed.data.eval_results} == {
        k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
    }
    text = card.content
    for needle in ("not a medical device", 'pipeline("image-classification", model="me/densenet121-lpft-chest-xray")',
                   'timm.create_model("hf-hub:me/densenet121-lpft-chest-xray"', "Kumar et al. 2022",
                   "| pneumonia | 0.600 | 0.700 | 0.650 | 5 |"):  # fmt: skip
        assert needle in text
    assert "the test split was evaluated once" in text

    without_test = model_card(RunResult.from_dict({**results, "test": None}), "me/x").content
    assert "## Results (validation split" in without_test and "evaluated once" not in without_test
    assert "no test split: the scores above are on the validation split (validation) that also chose" in without_test


# ---- real round trips through the real client, against the local Hub server ------------------------------------
hub_server = hub_server_module.hub_server  # the fixture


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_dataset, tmp_path_factory):
    """A tiny LP-FT run, trained once for the tests that push it (each gets its own copy)."""
    output_dir = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_model, tiny_dataset, output_dir, "--strategy", "lpft", "--modality", "X-ray")
    return output_dir


@pytest.fixture
def pushed(hub_server, trained, tmp_path):
    """A copy of `trained`, pushed to a fresh local Hub by `medft-push model` (`push_model`)."""
    output_dir = tmp_path / "run"
    shutil.copytree(trained, output_dir)
    push_model(output_dir, "tester/tiny-lpft", delay_s=0)
    return output_dir


def _local_hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_card_from_a_local_copy_names_the_hub_sources_and_no_pushed_file_holds_a_local_path(
    hub_server, tiny_model, tiny_dataset, tmp_path
):
    output_dir = tmp_path / "run"
    train(tiny_model, tiny_dataset, output_dir, "--strategy", "lp", "--dataset_id", "someone/tiny-xray",
          "--base_model_id", "timm/test_efficientnet.r160_in1k", "--num_train_epochs", "1")  # fmt: skip
    results = json.loads((output_dir / "results.json").read_text())
    results["test"]["auroc"] = float("nan")  # a class absent from a split leaves AUROC undefined
    (output_dir / "results.json").write_text(json.dumps(results))
    push_model(output_dir, "tester/from-local", delay_s=0)
    card = ModelCard.load("tester/from-local")
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict(), "the metadata survives a parse round trip"
    assert card.data.base_model == "timm/test_efficientnet.r160_in1k"
    assert card.data.datasets == ["someone/tiny-xray"]
    assert card.data.license == "apache-2.0", "the licence of the backbone's weights, from its timm config"
    assert {r.dataset_type for r in card.data.eval_results} == {"someone/tiny-xray"}
    assert "auroc" not in {r.metric_type for r in card.data.eval_results}
    assert "AUROC: not defined on this split" in card.content
    assert "ECE (top-label, 15 equal-width bins)" in card.content and "95% CI" in card.content
    assert "null" not in card.content.split("Strategy settings:")[1].splitlines()[0]
    for local in {str(tmp_path), str(tiny_model), str(tiny_dataset), "/tmp/"}:
        for name in hub_server.list_files("tester/from-local"):
            assert local.encode() not in hub_server.read_file("tester/from-local", name), f"{local} is in {name}"


def test_train_push_to_hub_pushes_the_run_and_records_where(hub_server, tiny_model, tiny_dataset, tmp_path):
    output_dir = tmp_path / "run"
    results = train(tiny_model, tiny_dataset, output_dir, "--strategy", "lpft", "--push_to_hub",
                    "--hub_model_id", "tester/tiny-lpft", "--modality", "X-ray")  # fmt: skip
    assert "tester/tiny-lpft" in results.pushed_to
    assert json.loads((output_dir / "results.json").read_text())["pushed_to"] == results.pushed_to
    assert {"model.safetensors", "results.json", "README.md"} <= set(hub_server.list_files("tester/tiny-lpft"))
    pushed_results = json.loads(hub_server.read_file("tester/tiny-lpft", "results.json"))
    assert pushed_results["pushed_to"] is None, "the copy pushed was written before the push"


def test_a_pushed_model_loads_three_ways_with_the_local_predictions(pushed, hub_server, tiny_dataset):
    output_dir = pushed
    files = set(hub_server.list_files("tester/tiny-lpft"))
    assert {"config.json", "model.safetensors", "results.json", "README.md", "training_curves.png",
            "confusion_matrix.png"} <= files  # fmt: skip
    assert not any(name.startswith("checkpoint-") for name in files)
    image = datasets.load_dataset(str(tiny_dataset), split="test")[0]["image"].convert("RGB")

    local = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    remote = AutoModelForImageClassification.from_pretrained("tester/tiny-lpft").eval()
    from_timm = timm.create_model("hf-hub:tester/tiny-lpft", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=from_timm))
    pixels = transform(image).unsqueeze(0)
    remote_weights = remote.state_dict()
    for name, tensor in local.state_dict().items():
        assert torch.equal(tensor, remote_weights[name]), f"{name} differs after the round trip"
    with torch.no_grad():  # same weights; the same kernels may still round differently from run to run
        expected = local(pixel_values=pixels).logits
        torch.testing.assert_close(remote(pixel_values=pixels).logits, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(from_timm(pixels), expected, rtol=1e-5, atol=1e-6)
    predictions = pipeline("image-classification", model="tester/tiny-lpft", device="cpu")(image, top_k=3)
    assert {p["label"] for p in predictions} == {"benign", "malignant", "normal"}
    top = max(predictions, key=lambda p: p["score"])
    assert top["label"] == local.config.id2label[int(expected.argmax())]


def test_the_pushed_card_parses_and_its_model_index_equals_results_json(pushed, hub_server):
    output_dir = pushed
    card = ModelCard.load("tester/tiny-lpft")
    on_disk = json.loads((output_dir / "results.json").read_text())
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        k: on_disk["test"][k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
    }
    assert {"medical-imaging", "X-ray", "lpft", "medft-hf"} <= set(card.data.tags)
    assert '"lp_epochs": 1' in card.content.split("Strategy settings:")[1].splitlines()[0]
    for name in hub_server.list_files("tester/tiny-lpft"):
        assert b"hf_test_token" not in hub_server.read_file("tester/tiny-lpft", name), f"the token leaked into {name}"


def test_server_errors_are_retried_then_reported_with_local_files_intact(pushed, hub_server):
    output_dir = pushed
    before = _local_hashes(output_dir)
    hub_server.fail_next(2)  # two 500s, then the retry goes through
    assert push_model(output_dir, "tester/again", delay_s=0).startswith(hub_server.endpoint)
    hub_server.fail_next(100)
    with pytest.raises(PushError, match=r"failed after 3 attempts.*safe in .*medft-push model"):
        push_model(output_dir, "tester/never", delay_s=0)
    after = _local_hashes(output_dir)
    assert {k: v for k, v in after.items() if k != "README.md"} == {k: v for k, v in before.items() if k != "README.md"}


def test_an_error_from_the_xet_upload_path_ends_as_the_same_clear_push_failure(pushed, monkeypatch):
    output_dir = pushed
    before = _local_hashes(output_dir)

    def xet_failure(*args, **kwargs):
        raise RuntimeError("Data processing error: CAS service error : Reqwest Error")  # as hf_xet raises them

    monkeypatch.setattr(HfApi, "create_commit", xet_failure)
    with pytest.raises(PushError, match=r"failed after 3 attempts \(RuntimeError: Data processing error.*safe in"):
        push_model(output_dir, "tester/xet", delay_s=0)
    after = _local_hashes(output_dir)
    assert {k: v for k, v in after.items() if k != "README.md"} == {k: v for k, v in before.items() if k != "README.md"}


def test_a_connection_dropped_mid_push_is_retried_and_the_cli_exit_code_says_when_it_failed(pushed, hub_server):
    output_dir = pushed
    hub_server.drop_next(1)
    assert push_model(output_dir, "tester/dropped", delay_s=0)
    assert "model.safetensors" in hub_server.list_files("tester/dropped")
    hub_server.drop_next(100)
    result = subprocess.run([sys.executable, "-m", "medft_hf.hub", "model", str(output_dir), "--repo_id", "tester/x"],
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 3
    assert f"The files are safe in {output_dir}" in result.stderr
    assert "hf_test_token" not in result.stderr + result.stdout
    assert (output_dir / "model.safetensors").exists()


def test_a_study_is_pushed_as_a_dataset_repo(hub_server, tmp_path):
    from test_study import write_result

    from medft_hf.report import write_report

    for seed in range(2):
        write_result(tmp_path / "runs", "d", "ft", seed, 1e-3, 0.5, 0.6)
        write_result(tmp_path / "runs", "d", "lpft", seed, 1e-3, 0.5, 0.7)
    report = tmp_path / "report"
    write_report(tmp_path / "runs", report)
    written = sorted(report.iterdir())
    push_study(report, "tester/study", delay_s=0)
    assert sorted(report.iterdir()) == written  # the card is made for the repo, not written into the report
    assert {"README.md", "runs.parquet", "delta_vs_ft.png"} <= set(hub_server.list_files("tester/study", "dataset"))
    assert hub_server.read_file("tester/study", "runs.parquet", "dataset") == (report / "runs.parquet").read_bytes()
    card = DatasetCard.load("tester/study", repo_type="dataset")
    assert "## Test results" in card.text
    table = datasets.load_dataset("tester/study", split="train")
    assert len(table) == 4


def test_the_space_is_created_and_uploaded(hub_server):
    result = subprocess.run([sys.executable, "scripts/push_space.py", "tester/demo"], cwd=ROOT, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    files = set(hub_server.list_files("tester/demo", "space"))
    assert {"app.py", "README.md", "requirements.txt", "models.yaml", "medft_hf/__init__.py",
            "medft_hf/hub_configs/benchmarks/cpu.yaml", "examples/chest-xray-pneumonia.png"} <= files  # fmt: skip
    readme = hub_server.read_file("tester/demo", "README.md", "space").decode()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme
