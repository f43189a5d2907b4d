"""medft-hf demo: try fine-tuned medical image classifiers, compare fine-tuning strategies, browse a study.

Serves the models named in `models.yaml` beside this file (or the YAML file in $MEDFT_SPACE_CONFIG): Hub model ids
or local `train.py` output folders, each loaded once at start-up; one that fails to load is listed as unavailable,
with the reason, and the others serve. Images are preprocessed by the model's own image processor, from the size and
crop it was trained and evaluated with, exactly as `pipeline("image-classification")` does. Run locally with
`python spaces/medft-demo/app.py`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
import yaml
from huggingface_hub import hf_hub_download, snapshot_download
from PIL import Image, UnidentifiedImageError
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from transformers import AutoImageProcessor, AutoModelForImageClassification

from medft_hf.images import to_rgb
from medft_hf.results import RESULTS_FILE, RunResult

HERE = Path(__file__).resolve().parent
MAX_SIDE = 2048  # larger uploads are shrunk first: the model sees a few hundred pixels anyway
DISCLAIMER = (
    "**Research demonstration only — not a medical device, not for diagnosis or any clinical decision.** "
    "Each model was trained on one public dataset and says nothing reliable about other patients or scanners."
)
Image.MAX_IMAGE_PIXELS = 200_000_000  # a 10000×10000 scan is fine; decompression bombs beyond this are refused
# The bundled examples' imaging domain, from the file name's prefix; compared with each model's modality.
EXAMPLE_DOMAINS = {"breast-ultrasound": "ultrasound", "chest-xray": "X-ray"}
# A Space serves for weeks: overlays and Gradio's copies of them not used for this long are deleted.
CACHE_AGE_S = 3600
logger = logging.getLogger(__name__)


class _Logits(torch.nn.Module):
    """The transformers model as the plain logits function Grad-CAM expects."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


@dataclass
class ServedModel:
    name: str
    source: str
    model: torch.nn.Module
    processor: Any  # the model's own image processor: what pipeline() uses
    target_layer: torch.nn.Module
    result: RunResult
    # Grad-CAM hooks live on the model, so two requests on one model at once would mix their activations.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, source: str, name: str | None = None) -> ServedModel:
        model = AutoModelForImageClassification.from_pretrained(source, use_safetensors=True).eval()
        processor = AutoImageProcessor.from_pretrained(source)
        timm_model = model.timm_model
        local = Path(source)
        result = RunResult.load(local if local.is_dir() else hf_hub_download(source, RESULTS_FILE))
        layer = timm_model.get_submodule(timm_model.feature_info[-1]["module"])
        label = name or f"{result.strategy} · {result.architecture} · {result.dataset_name}"
        return cls(label, source, model, processor, layer, result)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The model's input for `image`: resized and cropped as in training's evaluation, normalised."""
        return self.processor(image, return_tensors="pt")["pixel_values"]

    def seen(self, pixels: torch.Tensor) -> np.ndarray:
        """The image the model saw (its input without the normalisation), H×W×3 in [0, 1]."""
        mean = torch.tensor(self.processor.data_config["mean"]).view(3, 1, 1)
        std = torch.tensor(self.processor.data_config["std"]).view(3, 1, 1)
        return (pixels[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)

    def metrics_markdown(self) -> str:
        split, metrics = self.result.split, self.result.metrics
        text = (
            f"**{self.name}** — strategy `{self.result.strategy}`, {split} balanced accuracy "
            f"{metrics['balanced_accuracy']:.3f}, AUROC {metrics['auroc']:.3f}, macro F1 {metrics['macro_f1']:.3f}"
        )
        if "ece" in metrics:
            text += f", ECE {metrics['ece']:.3f}, Brier {metrics['brier']:.3f}"
        if "sensitivity" in metrics:
            text += (
                f", sensitivity ({self.result.positive_class}) {metrics['sensitivity']:.3f}, "
                f"specificity {metrics['specificity']:.3f}"
            )
        images = self.result.num_examples.get(split, "?")
        return text + f" ({images} images; measured with the same preprocessing this demo applies)"

    def predict(self, image: Image.Image) -> tuple[dict[str, float], np.ndarray]:
        """Class probabilities and a Grad-CAM overlay for the top class, drawn on the image the model saw."""
        pixels = self.pixels(image)
        with self.lock:
            with torch.no_grad():
                probabilities = self.model(pixel_values=pixels).logits.softmax(-1)[0]
            top = int(probabilities.argmax())
            with GradCAM(model=_Logits(self.model), target_layers=[self.target_layer]) as cam:
                heat = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(top)])[0]
        labels = {self.model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
        overlay = show_cam_on_image(self.seen(pixels), heat, use_rgb=True)
        return labels, np.asarray(Image.fromarray(overlay).resize((256, 256), Image.Resampling.NEAREST))

    def domain_warning(self, path: str) -> str | None:
        """A warning when a bundled example of one imaging domain is sent to a model trained on another."""
        modality = self.result.modality
        domain = next((d for prefix, d in EXAMPLE_DOMAINS.items() if Path(path).name.startswith(prefix)), None)
        if modality and domain and Path(path).parent == HERE / "examples" and domain.lower() != modality.lower():
            return f"This example is a {domain} image; {self.name} was trained on {modality} images."
        return None


def load_models(entries: list[dict[str, Any]]) -> tuple[list[ServedModel], dict[str, str]]:
    """Every model that loads, and for each that does not, the reason: one bad entry must not stop the Space."""
    served, unavailable = [], {}
    for entry in entries:
        name = entry.get("name") or entry.get("source", "?")
        try:
            served.append(ServedModel.load(entry["source"], entry.get("name")))
        except Exception as error:
            logger.warning("model %s is unavailable: %s", name, error)
            unavailable[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    return served, unavailable


@functools.cache
def overlay_folder() -> Path:
    """This process's folder of overlays, made private by mkdtemp: no other user of the machine can plant a file in
    it. Gradio serves from the system's temporary directory, where it lies."""
    return Path(tempfile.mkdtemp(prefix="medft-demo-overlays-"))


def overlay_file(overlay: np.ndarray) -> str:
    """The overlay as a PNG named by its content, written once and atomically.

    Handed an array, Gradio rewrites its cached copy in place on every request, so a request with the same answer
    truncates the file while an earlier client downloads it (five simultaneous requests failed that way). A file it
    copies into its cache once, atomically; the same content here is a file already there, never rewritten.
    """
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format="png")
    data = buffer.getvalue()
    path = overlay_folder() / f"{hashlib.sha256(data).hexdigest()}.png"
    try:
        os.utime(path)  # used again: not stale
    except FileNotFoundError:
        descriptor, staging = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            Path(staging).replace(path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        _forget_stale_overlays(path.parent)
    return str(path)


def _forget_stale_overlays(folder: Path) -> None:
    """Delete the overlays nobody asked for in CACHE_AGE_S (Gradio copied each into its cache when it was served)."""
    stale = time.time() - CACHE_AGE_S
    for old in folder.glob("*.png"):
        with contextlib.suppress(FileNotFoundError):  # another request deleted it first
            if old.stat().st_mtime < stale:
                old.unlink()


class ImageInput(gr.Image):
    """gr.Image whose unreadable uploads (not an image, truncated) get a friendly message, not a stack trace:
    gr.Image opens the file with PIL before our function runs."""

    def get_block_name(self) -> str:
        return "image"  # the front end of gr.Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            raise gr.Error(unreadable(error)) from error


def unreadable(error: Exception) -> str:
    return f"That file could not be read as an image ({type(error).__name__}). Try a PNG or JPEG."


def read_image(path: str | None) -> Image.Image:
    """The uploaded file as an RGB image, or a message the user can act on."""
    if not path:
        raise gr.Error("Please upload an image (PNG, JPEG, TIFF...) or pick an example.")
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at reduced size directly
            image = opened.copy()
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise gr.Error(unreadable(error)) from error
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return to_rgb(image)


def load_config() -> dict[str, Any]:
    path = Path(os.environ.get("MEDFT_SPACE_CONFIG", HERE / "models.yaml"))
    config = yaml.safe_load(path.read_text()) or {}
    base = path.parent
    for entry in config.get("models", []):
        if not Path(entry["source"]).is_absolute() and (base / entry["source"]).exists():
            entry["source"] = str(base / entry["source"])
    if config.get("study") and (base / config["study"]).exists():
        config["study"] = str(base / config["study"])
    return config


def load_study(source: str | None) -> tuple[str, str | None]:
    """The paper-style table and the Δ-vs-ft heatmap of a `medft-report` folder or a Hub dataset repo."""
    if not source:
        return "No study configured: set `study:` in models.yaml to a medft-report folder or Hub dataset.", None
    folder = Path(source) if Path(source).is_dir() else Path(snapshot_download(source, repo_type="dataset"))
    report = (
        (folder / "report.md").read_text() if (folder / "report.md").exists() else (folder / "README.md").read_text()
    )
    report = re.sub(r"^---\n.*?\n---\n", "", report, flags=re.DOTALL)  # a dataset card's metadata block
    sections = report.split("\n## ")
    keep = [s for s in sections if s.startswith(("Test results", "The paper's claims", "Each strategy against ft"))]
    heatmap = folder / "delta_vs_ft.png"
    text = "\n\n".join("## " + s for s in keep) or report
    return text, str(heatmap) if heatmap.exists() else None


def build_demo(
    models: list[ServedModel], study_source: str | None, unavailable: dict[str, str] | None = None
) -> gr.Blocks:
    by_name = {m.name: m for m in models}
    examples = sorted(str(p) for p in (HERE / "examples").glob("*.png"))
    status = "".join(f"\n- **{name}** is unavailable: {reason}" for name, reason in (unavailable or {}).items())

    def predict(path: str | None, name: str):
        model = by_name[name]
        labels, heatmap = model.predict(read_image(path))
        warning = model.domain_warning(path) if path else None
        if warning:
            gr.Warning(warning)
        return labels, overlay_file(heatmap), model.metrics_markdown() + (f"\n\n⚠ {warning}" if warning else "")

    def compare(path: str | None, names: list[str]):
        if not names:
            raise gr.Error("Pick at least one model to compare.")
        image = read_image(path)
        gallery, lines = [], ["| model | top class | probability |", "|---|---|---|"]
        for name in names:
            labels, heatmap = by_name[name].predict(image)
            top = max(labels, key=labels.get)
            gallery.append((overlay_file(heatmap), f"{name}: {top} ({labels[top]:.2f})"))
            lines.append(f"| {name} | {top} | {labels[top]:.3f} |")
        metrics = "\n\n".join(by_name[name].metrics_markdown() for name in names)
        return gallery, "\n".join(lines) + "\n\n" + metrics

    study_text, study_heatmap = load_study(study_source)
    with gr.Blocks(
        title="medft-hf: fine-tuning strategies for medical images", delete_cache=(CACHE_AGE_S, CACHE_AGE_S)
    ) as demo:
        gr.Markdown("# medft-hf: fine-tuned medical image classifiers\n" + DISCLAIMER + status, elem_id="intro")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    # image_mode=None: grayscale and 16-bit uploads reach read_image as they are, not clipped to 8 bits
                    image = ImageInput(type="filepath", image_mode=None, label="Image")
                    choice = gr.Dropdown(list(by_name), value=models[0].name, label="Model")
                    run = gr.Button("Predict", variant="primary")
                    gr.Examples(
                        examples,
                        inputs=image,
                        label="Examples (MedMNIST v2 / Kermany et al. 2018, CC BY 4.0): use the one of your model's "
                        "domain (breast ultrasound or chest X-ray)",
                    )
                with gr.Column():
                    label = gr.Label(num_top_classes=3, label="Prediction")
                    heatmap = gr.Image(label="Grad-CAM (where the model looked)", elem_id="heatmap")
                    metrics = gr.Markdown(elem_id="metrics")
            run.click(predict, [image, choice], [label, heatmap, metrics], api_name="predict")
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column():
                    compare_image = ImageInput(type="filepath", image_mode=None, label="Image")
                    picked = gr.CheckboxGroup(list(by_name), value=list(by_name)[:3], label="Models")
                    compare_run = gr.Button("Compare", variant="primary")
                    gr.Examples(examples, inputs=compare_image)
                with gr.Column():
                    gallery = gr.Gallery(label="Grad-CAM per model", columns=3, height="auto")
                    table = gr.Markdown()
            compare_run.click(compare, [compare_image, picked], [gallery, table], api_name="compare")
        with gr.Tab("Study"):
            gr.Markdown(study_text)
            if study_heatmap:
                gr.Image(study_heatmap, label="Test score difference to full fine-tuning", interactive=False)
    return demo


def main() -> None:
    config = load_config()
    models, unavailable = load_models(config.get("models", []))
    if not models:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in unavailable.items())
        raise SystemExit(
            f"No model could be served ({reasons or 'none configured'}): list them under `models:` in models.yaml "
            "or $MEDFT_SPACE_CONFIG."
        )
    demo = build_demo(models, config.get("study"), unavailable)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )


if __name__ == "__main__":
    main()
