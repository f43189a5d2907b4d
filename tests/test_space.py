"""The Gradio Space: its API through gradio_client (bad inputs included) and its pages in a real browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hub_server as hub_server_module
import numpy as np
import pytest
import yaml
from PIL import Image
from test_study import write_result
from test_train import ROOT, train

from medft_hf.report import write_report

pytest.importorskip("gradio", reason="the Space's dependencies (gradio, grad-cam) are not installed")
from gradio_client import Client, handle_file

CHROMIUM = Path("/usr/bin/chromium")
hub_server = hub_server_module.hub_server  # the fixture
APP = ROOT / "spaces" / "medft-demo" / "app.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def space_config(tiny_model, tiny_dataset, tmp_path_factory) -> Path:
    """Two tiny models trained here (or, with MEDFT_SPACE_TEST_CONFIG, a config of models trained on real data)."""
    if os.environ.get("MEDFT_SPACE_TEST_CONFIG"):
        return Path(os.environ["MEDFT_SPACE_TEST_CONFIG"])
    folder = tmp_path_factory.mktemp("space")
    models = []
    for strategy in ("ft", "lpft"):
        train(tiny_model, tiny_dataset, folder / strategy, "--strategy", strategy)
        models.append({"name": strategy.upper(), "source": str(folder / strategy)})
    models.append({"name": "broken", "source": str(folder / "no-such-model")})  # must not stop the others
    for seed in range(2):
        for strategy, score in (("ft", 0.6), ("lpft", 0.7)):
            write_result(folder / "study_runs", "d", strategy, seed, 1e-3, 0.5, score + 0.01 * seed)
    write_report(folder / "study_runs", folder / "study")
    config = folder / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models, "study": str(folder / "study")}))
    return config


@pytest.fixture(scope="module")
def space_url(space_config) -> str:
    port = _free_port()
    env = {**os.environ, "MEDFT_SPACE_CONFIG": str(space_config), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    process = subprocess.Popen([sys.executable, str(APP)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited: {process.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the app did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(space_url) -> Client:
    return Client(space_url, verbose=False)


def _models(space_config: Path) -> list[str]:
    return [entry["name"] for entry in yaml.safe_load(space_config.read_text())["models"] if entry["name"] != "broken"]


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    files = {
        "rgb": _png(folder / "rgb.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
        "gray": _png(folder / "gray.png", rng.integers(0, 255, (40, 50), dtype=np.uint8)),
        "rgba": _png(folder / "rgba.png", rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)),
        "16bit": _png(folder / "16bit.png", rng.integers(0, 65535, (64, 64), dtype=np.uint16)),
        "huge": _png(folder / "huge.png", np.zeros((10_000, 10_000), dtype=np.uint8)),
    }
    (folder / "notes.txt").write_text("not an image")
    files["text"] = str(folder / "notes.txt")
    (folder / "corrupt.png").write_bytes(Path(files["rgb"]).read_bytes()[:200])
    files["corrupt"] = str(folder / "corrupt.png")
    return files


def test_predict_returns_classes_heatmap_and_metrics(client, space_config, inputs):
    labels, heatmap, metrics = client.predict(handle_file(inputs["rgb"]), _models(space_config)[0], api_name="/predict")
    assert len(labels["confidences"]) >= 2
    assert sum(c["confidence"] for c in labels["confidences"]) == pytest.approx(1.0, abs=0.02)
    assert Image.open(heatmap).size == (256, 256)
    assert "balanced accuracy" in metrics


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit", "huge"])
def test_unusual_images_get_a_prediction(client, space_config, inputs, kind):
    labels, _, _ = client.predict(handle_file(inputs[kind]), _models(space_config)[0], api_name="/predict")
    assert labels["label"] in {c["label"] for c in labels["confidences"]}


@pytest.mark.parametrize(
    ("kind", "message"), [("text", "could not be read as an image"), ("corrupt", "could not be read as an image"),
                          (None, "Please upload an image")]
)  # fmt: skip
def test_bad_inputs_get_a_friendly_message_and_the_app_keeps_serving(client, space_config, inputs, kind, message):
    name = _models(space_config)[0]
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(inputs[kind]) if kind else None, name, api_name="/predict")
    labels, _, _ = client.predict(handle_file(inputs["rgb"]), name, api_name="/predict")
    assert labels["label"]


def test_five_simultaneous_requests_are_all_answered(space_url, space_config, inputs):
    name = _models(space_config)[0]

    def one(_):
        return Client(space_url, verbose=False).predict(handle_file(inputs["rgb"]), name, api_name="/predict")[0]

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(one, range(5)))
    assert len({a["label"] for a in answers}) == 1 and len(answers) == 5


def test_compare_runs_every_chosen_model(client, space_config, inputs):
    names = _models(space_config)
    gallery, table = client.predict(handle_file(inputs["rgb"]), names, api_name="/compare")
    assert len(gallery) == len(names)
    for name in names:
        assert f"| {name} |" in table


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_pages_work_in_a_real_browser(space_url, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    shots = Path(os.environ.get("MEDFT_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    example = ROOT / "spaces" / "medft-demo" / "examples" / "breast-ultrasound-malignant.png"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(space_url)
        page.get_by_text("not a medical device").first.wait_for()
        page.locator("input[type=file]").first.set_input_files(str(example))
        page.get_by_role("button", name="Predict").click()
        page.locator("#metrics").get_by_text("balanced accuracy").wait_for(timeout=60_000)
        page.locator("#heatmap img").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "space_predict.png"), full_page=True)

        page.get_by_role("tab", name="Compare").click()
        page.locator("input[type=file]").nth(1).set_input_files(str(example))
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("top class").wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "space_compare.png"), full_page=True)

        page.get_by_role("tab", name="Study").click()
        page.get_by_text("Test results").first.wait_for()
        page.screenshot(path=str(shots / "space_study.png"), full_page=True)
        browser.close()
    for name in ("space_predict.png", "space_compare.png", "space_study.png"):
        assert (shots / name).stat().st_size > 10_000
    if "MEDFT_SCREENSHOT_DIR" not in os.environ:
        shutil.rmtree(shots, ignore_errors=True)


def test_the_study_tab_reads_a_hub_dataset_repo(hub_server, tmp_path):
    from medft_hf.hub import push_study

    for seed in range(2):
        write_result(tmp_path / "runs", "d", "ft", seed, 1e-3, 0.5, 0.6)
        write_result(tmp_path / "runs", "d", "lpft", seed, 1e-3, 0.5, 0.7)
    write_report(tmp_path / "runs", tmp_path / "report")
    push_study(tmp_path / "report", "tester/study", delay_s=0)
    text, heatmap = _app().load_study("tester/study")
    assert "## Test results" in text and "| d | net |" in text
    assert "pretty_name" not in text, "the card's metadata block is not shown"
    assert Path(heatmap).name == "delta_vs_ft.png"


# ---- what the Space computes, in-process ----------------------------------------------------------------------
def _app():
    """The Space's app.py as a module (it is a script beside the package, not part of it)."""
    import importlib.util

    if "space_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("space_app", APP)
        app = importlib.util.module_from_spec(spec)
        sys.modules["space_app"] = app  # dataclasses look their module up there
        spec.loader.exec_module(app)
    return sys.modules["space_app"]


@pytest.fixture(scope="module")
def breastmnist_model(tiny_model, tmp_path_factory) -> Path:
    """A model trained by train.py on the real (bundled) BreastMNIST, at 32 px: not the architecture's default size."""
    folder = tmp_path_factory.mktemp("breastmnist_model")
    train(tiny_model, None, folder, "--strategy", "ft", "--num_train_epochs", "1", "--modality", "ultrasound")
    return folder


def test_the_space_predicts_what_pipeline_predicts_on_20_real_images(breastmnist_model):
    import datasets
    from transformers import pipeline

    from medft_hf.data import bundled_dataset_path

    served = _app().ServedModel.load(str(breastmnist_model))
    classifier = pipeline("image-classification", model=str(breastmnist_model), device="cpu")
    images = datasets.load_dataset(bundled_dataset_path(), split="test").select(range(20))["image"]
    for image in images:
        labels, _ = served.predict(image.convert("RGB"))
        expected = {p["label"]: p["score"] for p in classifier(image.convert("RGB"), top_k=None)}
        assert labels == pytest.approx(expected, abs=1e-5)
    assert served.pixels(images[0].convert("RGB")).shape[-1] == 32, "the size the model was trained at"


def test_a_12_bit_upload_reaches_the_model_unclipped(breastmnist_model, tmp_path):
    from gradio.data_classes import FileData

    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # a 12-bit ramp in a 16-bit PNG
    path = _png(tmp_path / "ramp.png", ramp)
    app = _app()
    received = app.ImageInput(type="filepath", image_mode=None).preprocess(FileData(path=path))
    served = app.ServedModel.load(str(breastmnist_model))
    seen = served.seen(served.pixels(app.read_image(received)))[..., 0]
    assert seen.min() < 0.02 and seen.max() > 0.98, "the full range reaches the model"
    assert (seen > 0.98).mean() < 0.1, "not saturated (gr.Image's default 8-bit conversion saturated 94%)"
    assert np.all(np.diff(seen.mean(axis=0)) >= -1e-3), "still a ramp"


def test_concurrent_requests_get_the_heatmaps_of_sequential_ones(breastmnist_model, inputs):
    app = _app()
    served = app.ServedModel.load(str(breastmnist_model))
    images = [app.read_image(inputs["rgb"]), app.read_image(inputs["gray"])] * 4
    sequential = [served.predict(image)[1] for image in images]
    with ThreadPoolExecutor(len(images)) as pool:
        concurrent = list(pool.map(lambda image: served.predict(image)[1], images))
    for one, other in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(one, other)


def test_an_overlay_file_is_written_once_and_never_rewritten(tmp_path, monkeypatch):
    app = _app()
    monkeypatch.setattr(app, "overlay_folder", lambda: tmp_path)
    overlay = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path = Path(app.overlay_file(overlay))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), overlay)
    written = path.stat().st_ino
    # Another request with the same answer must leave alone the file an earlier client may still be downloading.
    assert app.overlay_file(overlay.copy()) == str(path) and path.stat().st_ino == written
    assert app.overlay_file(255 - overlay) != str(path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".png", ".png"], "no staging file left behind"


def test_overlays_nobody_asked_for_in_an_hour_are_deleted(tmp_path, monkeypatch):
    app = _app()
    monkeypatch.setattr(app, "overlay_folder", lambda: tmp_path)
    rng = np.random.default_rng(0)
    kept, dropped = (Path(app.overlay_file(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))) for _ in range(2))
    long_ago = time.time() - app.CACHE_AGE_S - 60
    for path in (kept, dropped):
        os.utime(path, (long_ago, long_ago))
    app.overlay_file(np.asarray(Image.open(kept)))  # asked for again: fresh
    app.overlay_file(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))  # a new one: the stale ones go
    assert kept.exists() and not dropped.exists() and len(list(tmp_path.iterdir())) == 2


def test_a_broken_entry_is_listed_as_unavailable_and_the_others_serve(space_url, breastmnist_model, tmp_path):
    served, unavailable = _app().load_models(
        [{"name": "good", "source": str(breastmnist_model)}, {"name": "typo", "source": str(tmp_path / "nope")}]
    )
    assert [m.name for m in served] == ["good"]
    assert set(unavailable) == {"typo"}
    page = urllib.request.urlopen(space_url + "config", timeout=10).read().decode()
    assert "**broken** is unavailable" in page, "the running Space (with a broken entry) says so and serves"


def test_examples_of_another_domain_are_flagged(breastmnist_model):
    served = _app().ServedModel.load(str(breastmnist_model))
    examples = Path(APP).parent / "examples"
    assert served.domain_warning(str(examples / "chest-xray-pneumonia.png")).startswith("This example is a X-ray")
    assert served.domain_warning(str(examples / "breast-ultrasound-benign.png")) is None


def test_the_app_imports_only_what_serving_needs():
    probe = (
        "import sys, importlib.util; spec = importlib.util.spec_from_file_location('app', sys.argv[1]); "
        "app = sys.modules['app'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(app); "
        "print(sorted(m for m in ('datasets', 'evaluate', 'medft_hf.train', 'medft_hf.data') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(APP)], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]
