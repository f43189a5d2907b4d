"""Training speed, side by side: the project's Trainer against a minimal bare PyTorch loop on the same model, weights
and decoded images, in one process. `python scripts/bench_speed.py --help`; docs/performance.md has its output.

Absolute speeds move between machines and even minutes; compare the ratios of pairs run back to back. Every timing
covers training steps with their data pipeline (DataLoader, augmentation), not the one-off decoding of the cache.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import torch
import transformers
from transformers import TrainerCallback

from medft_hf.cache import check_feature_cache, image_datasets, on_stored_features
from medft_hf.data import Preprocessing, load_splits
from medft_hf.metrics import metrics_for_trainer
from medft_hf.modeling import BlockLayout, load_model
from medft_hf.strategies import STRATEGIES, build_strategy
from medft_hf.train import MedftTrainingArguments
from medft_hf.trainer import StrategyTrainer


@dataclass
class Bench:
    model: str
    dataset: str
    image_size: int
    max_train_samples: int
    batch_size: int
    learning_rate: float
    output: Path
    bf16: bool = False

    @functools.cached_property
    def train_images(self) -> int:
        """The rows trained on: --max_train_samples, or fewer when the train split is smaller."""
        return len(load_splits(self.dataset, max_train_samples=self.max_train_samples, seed=0).train)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def data(self, pipeline: str, augmentation: str = "light"):
        splits = load_splits(self.dataset, max_train_samples=self.max_train_samples, seed=0)
        model = load_model(self.model, splits.class_names)
        preprocessing = Preprocessing.for_model(model.timm_model, self.image_size, augmentation)
        train, validation, _ = image_datasets(splits, preprocessing, seed=0, cached=pipeline != "pil")
        return model, train, validation

    def unaugmented_train(self, model) -> torch.utils.data.Dataset:
        """The training rows as evaluation sees them: what the feature pass of `--cache_features` reads."""
        splits = load_splits(self.dataset, max_train_samples=self.max_train_samples, seed=0)
        preprocessing = Preprocessing.for_model(model.timm_model, self.image_size, "none")
        return image_datasets(splits, preprocessing, seed=0)[0]

    def trainer(
        self, strategy: str, epochs: int, pipeline: str = "decoded", evaluate: bool = False, channels_last=False
    ):
        """The StrategyTrainer as train.py builds it (training steps only, unless `evaluate`: then validation and
        a checkpoint every epoch, as a default run does). `channels_last` converts the model first, as a library
        option would."""
        transformers.set_seed(0)
        # lp on stored features cannot augment; the others augment the epochs they train on images
        augmentation = "none" if pipeline == "features" and strategy == "lp" else "light"
        model, train, validation = self.data(pipeline, augmentation)
        built = build_strategy(strategy, None, BlockLayout.from_model(model), epochs)
        model = built.prepare_model(model)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        per_epoch = "epoch" if evaluate else "no"
        args = MedftTrainingArguments(
            output_dir=tempfile.mkdtemp(dir=self.output),
            num_train_epochs=epochs,
            learning_rate=self.learning_rate,
            per_device_train_batch_size=self.batch_size,
            eval_strategy=per_epoch,
            save_strategy=per_epoch,
            logging_strategy=per_epoch,
            load_best_model_at_end=evaluate,
            report_to="none",
            disable_tqdm=True,
            bf16=self.bf16,
            use_cpu=not torch.cuda.is_available(),
            seed=0,
        )
        unaugmented_train = self.unaugmented_train(model) if pipeline == "features" else None
        started = time.perf_counter()
        takes_features = nullcontext()
        if pipeline == "features":  # as train.py: checked, then on the device the Trainer will use
            feature_epochs = check_feature_cache(built, model, augmentation, args)
            model.to(args.device)
            train, validation, takes_features = on_stored_features(
                model, unaugmented_train, (train, validation), feature_epochs, epochs, args.per_device_eval_batch_size
            )
        setup = time.perf_counter() - started
        trainer = StrategyTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=validation,
            compute_metrics=metrics_for_trainer() if evaluate else None,
            strategy=built,
        )
        return trainer, setup, takes_features

    def project_seconds(
        self, strategy: str, epochs: int, pipeline: str = "decoded", channels_last: bool = False
    ) -> tuple[float, float]:
        """Seconds of `train()` (with the feature extraction for `features`), and the median steady step."""
        trainer, setup, takes_features = self.trainer(strategy, epochs, pipeline, channels_last=channels_last)
        clock = StepClock()
        trainer.add_callback(clock)
        started = time.perf_counter()
        with takes_features:
            trainer.train()
        return setup + time.perf_counter() - started, statistics.median(clock.steps)

    def bare_seconds(self, strategy: str, epochs: int, channels_last: bool = False) -> float:
        """A minimal loop: decoded uint8 tensors in memory, flip and a 4-pixel shift on whole batches, and the same
        optimisation as the Trainer's default recipe (its AdamW variant, gradient clipping at --max_grad_norm 1,
        linear decay, bf16 autocast with `--bf16`), so the difference is the Trainer's overhead. The images sit on
        the device. For lp the backbone is frozen with its BatchNorm in eval mode."""
        transformers.set_seed(0)
        device = self.device
        model, train, _ = self.data("decoded")
        model.to(device)
        images = torch.stack([train.uint8(i) for i in range(len(train))]).to(device)
        labels = torch.as_tensor(train.labels, device=device)
        head = [p for name, p in model.named_parameters() if name in BlockLayout.from_model(model).new]
        if strategy == "lp":
            model.requires_grad_(False)
            for parameter in head:
                parameter.requires_grad_(True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        defaults = MedftTrainingArguments(output_dir=str(self.output), use_cpu=not torch.cuda.is_available())
        optimizer_cls, optimizer_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(defaults, model)
        optimizer = optimizer_cls(trainable, **{**optimizer_kwargs, "lr": self.learning_rate, "weight_decay": 1e-4})
        steps = epochs * math.ceil(len(labels) / self.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
        mean, std = (torch.as_tensor(value * 255, device=device) for value in (train.mean, train.std))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=memory_format)
        started = time.perf_counter()
        for _ in range(epochs):
            model.train()
            if strategy == "lp":
                model.timm_model.eval()  # frozen BatchNorm keeps its statistics
            for batch in torch.randperm(len(labels), device=device).split(self.batch_size):
                x = images[batch]
                x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(-1), x)
                dy, dx = torch.randint(-4, 5, (2,)).tolist()
                x = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="replicate")[
                    ..., 4 + dy : 4 + dy + x.shape[-2], 4 + dx : 4 + dx + x.shape[-1]
                ]
                with torch.autocast(device.type, torch.bfloat16, enabled=self.bf16):
                    x = ((x.float() - mean) / std).contiguous(memory_format=memory_format)
                    loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, defaults.max_grad_norm)
                optimizer.step()
                scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def interleaved_steps(self, strategies: list[str], epochs: int, rounds: int, steps: int) -> dict[str, list[float]]:
        """Seconds per optimizer step of each strategy, measured in turns: every round times `steps` steps of each
        strategy back to back, so a drift of the machine's speed hits all of them alike. A step is what the Trainer
        does per batch (forward with the strategy's penalty, backward, clipping, optimizer and scheduler step) on
        batches already collated, in the state of the strategy's last epoch (the most it trains; Auto-RGN's rates
        measured). The data pipeline is left out: it is the same for every strategy."""
        trainers = {}
        for strategy in strategies:
            trainer, _, _ = self.trainer(strategy, epochs)
            trainer.create_optimizer_and_scheduler(
                num_training_steps=epochs * math.ceil(self.train_images / self.batch_size)
            )
            trainer.begin_strategy_epoch(epochs - 1)
            trainer.current_gradient_accumulation_steps = 1  # set by train()'s loop, read by training_step
            rows = trainer.train_dataset
            batches = [
                trainer._prepare_inputs(trainer.data_collator([rows[i] for i in range(start, start + self.batch_size)]))
                for start in range(0, 4 * self.batch_size, self.batch_size)
            ]
            trainers[strategy] = trainer, batches
        seconds: dict[str, list[float]] = {strategy: [] for strategy in strategies}
        for _ in range(rounds + 1):  # the first round warms up
            for strategy, (trainer, batches) in trainers.items():
                started = time.perf_counter()
                for step in range(steps):
                    trainer.training_step(trainer.model, batches[step % len(batches)])
                    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
                    trainer.optimizer.step()
                    trainer.lr_scheduler.step()
                    trainer.model.zero_grad()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[strategy].append((time.perf_counter() - started) / steps)
        return {strategy: values[1:] for strategy, values in seconds.items()}

    def evaluation_images_per_second(self, repeats: int) -> float:
        """Validation images per second of `Trainer.evaluate` (median of `repeats` after an untimed one): the
        `eval` figure of a grid file's `throughput` (medft_hf/cost.py), its DataLoader start-up included."""
        trainer, _, _ = self.trainer("ft", 1, evaluate=True)
        trainer.evaluate()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            trainer.evaluate()
            seconds.append(time.perf_counter() - started)
        return len(trainer.eval_dataset) / statistics.median(seconds)

    def evaluation_share(self, epochs: int) -> dict[str, float]:
        """FT with validation and a checkpoint every epoch: the share of `train()`'s wall time outside the epochs'
        training loops (evaluation, checkpoints, set-up)."""
        trainer, _, _ = self.trainer("ft", epochs, evaluate=True)
        clock = EpochClock()
        trainer.add_callback(clock)
        output = trainer.train()
        runtime = output.metrics["train_runtime"]
        return {"train_runtime_s": runtime, "in_epochs_s": clock.total, "outside_share": 1 - clock.total / runtime}


class StepClock(TrainerCallback):
    """Seconds between consecutive optimizer steps inside an epoch (its batch included): the steady step, without
    what happens once per epoch (Auto-RGN's measurement, a phase switch, the epoch's first batch)."""

    def __init__(self):
        self.steps: list[float] = []
        self.last: float | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.last = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.last is not None:
            self.steps.append(now - self.last)
        self.last = now


class EpochClock(TrainerCallback):
    """Seconds from each epoch's start to its last optimizer step (batches, forward, backward, step)."""

    def __init__(self):
        self.total, self.started, self.last_step = 0.0, None, None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.last_step = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.total += self.last_step - self.started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="timm Hub id or local folder")
    parser.add_argument("--dataset", required=True, help="Hub id or local folder")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--max_train_samples", type=int, default=1200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="paired repeats (medians are reported)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument("--lp_epochs", type=int, default=10, help="epochs of the cached-feature LP comparison")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both the Trainer and the bare loop")
    only = parser.add_mutually_exclusive_group()  # one measurement instead of the full comparison
    only.add_argument(
        "--throughput_only",
        action="store_true",
        help="only FT training and evaluation images/s through the Trainer: a grid file's `throughput` entry",
    )
    only.add_argument(
        "--interleaved_rounds",
        type=int,
        default=0,
        help="only each strategy's step time against FT's, measured in this many interleaved rounds",
    )
    only.add_argument(
        "--stored_features_only",
        action="store_true",
        help="only each strategy's run with its head-only epochs on stored features against its run on images "
        "(strategies that start with the head alone: lp, lpft, gu_lf, gu_fl)",
    )
    only.add_argument(
        "--channels_last_only",
        action="store_true",
        help="only each strategy's run with the model in channels-last memory format against the same run contiguous",
    )
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    strategies = args.strategies.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        bench = Bench(
            args.model,
            args.dataset,
            args.image_size,
            args.max_train_samples,
            args.batch_size,
            args.learning_rate,
            Path(scratch),
            args.bf16,
        )
        if args.throughput_only:
            report_throughput(bench, args)
            return
        if args.interleaved_rounds:
            report_interleaved(bench, strategies, args)
            return
        if args.stored_features_only:
            # the image runs augment (light), the stored features cannot (lp: none at all)
            labels = ("on images", "--cache_features")
            report_paired(bench, strategies, args, labels, ({"pipeline": "decoded"}, {"pipeline": "features"}))
            return
        if args.channels_last_only:
            labels = ("contiguous", "channels-last")
            report_paired(bench, strategies, args, labels, ({}, {"channels_last": True}))
            return
        images = bench.train_images * args.epochs
        raw: dict[str, list[float]] = {}

        def timed(key: str, seconds: float | tuple[float, float]) -> None:
            seconds, step = seconds if isinstance(seconds, tuple) else (seconds, None)
            raw.setdefault(key, []).append(seconds)
            if step is not None:
                raw.setdefault(f"{key} step", []).append(step)
            print(f"  {key}: {seconds:.1f} s" + (f", steady step {step * 1000:.0f} ms" if step else ""), flush=True)

        bench.project_seconds("ft", 1)  # warm-up (allocator, oneDNN kernels, page cache): not timed
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
            for strategy in strategies:
                timed(f"project {strategy}", bench.project_seconds(strategy, args.epochs))
                if strategy in ("ft", "lp"):
                    timed(f"bare {strategy}", bench.bare_seconds(strategy, args.epochs))
                    timed(f"project {strategy} pil", bench.project_seconds(strategy, args.epochs, "pil"))
            if "ft" in strategies and repeat == 0:  # a first look, not a paired series
                if not args.bf16:
                    timed("project ft bf16", replace(bench, bf16=True).project_seconds("ft", 1))
                    timed("project ft 1 epoch", bench.project_seconds("ft", 1))
                timed("bare ft channels_last", bench.bare_seconds("ft", args.epochs, channels_last=True))
                timed("project ft channels_last", bench.project_seconds("ft", args.epochs, channels_last=True))
            timed(f"lp pil {args.lp_epochs} epochs", bench.project_seconds("lp", args.lp_epochs, "pil"))
            timed(f"lp features {args.lp_epochs} epochs", bench.project_seconds("lp", args.lp_epochs, "features"))
        share = bench.evaluation_share(6)

    median = {key: statistics.median(values) for key, values in raw.items()}

    def ratios(numerator: str, denominator: str) -> str:
        pairs = [a / b for a, b in zip(raw[numerator], raw[denominator], strict=True)]
        return ", ".join(f"{r:.2f}" for r in pairs) + f" (median {statistics.median(pairs):.2f})"

    print(f"\n{setting(args, bench.train_images)}, {args.repeats} paired repeats")
    print(
        "\n| strategy | Trainer (img/s) | bare loop (img/s) | Trainer / bare, time per image (per pair) | "
        "whole run vs FT (per pair) | steady step vs FT (per pair) |"
    )
    print("|---|---|---|---|---|---|")
    for strategy in strategies:
        project, bare = f"project {strategy}", f"bare {strategy}"
        versus_bare = f"{images / median[bare]:.0f} | {ratios(project, bare)}" if bare in raw else "- | -"
        versus_ft = (
            f"{ratios(project, 'project ft')} | {ratios(f'{project} step', 'project ft step')}"
            if "project ft" in raw
            else "- | -"
        )
        print(f"| {strategy} | {images / median[project]:.0f} | {versus_bare} | {versus_ft} |")
    print("\nBefore the cache (PIL decoding and augmentation on every step), Trainer time per image vs cached:")
    for strategy in ("ft", "lp"):
        if f"project {strategy} pil" in raw:
            print(f"- {strategy}: {ratios(f'project {strategy} pil', f'project {strategy}')}")
    if "bare ft channels_last" in raw:
        print("\nPrecision and memory format, time per image against the default (repeat 1):")
        if "project ft bf16" in raw:
            bf16 = raw["project ft bf16"][0] / raw["project ft 1 epoch"][0]
            print(f"- ft with --bf16 (autocast) vs fp32, one epoch: {bf16:.2f}")
        for side in ("bare", "project"):
            channels_last = raw[f"{side} ft channels_last"][0] / raw[f"{side} ft"][0]
            print(f"- {side} ft with channels-last vs contiguous: {channels_last:.2f}")
    print(
        f"\nLP for {args.lp_epochs} epochs: PIL pipeline with light augmentation (before) "
        f"{median[f'lp pil {args.lp_epochs} epochs']:.1f} s, cached features (feature extraction included) "
        f"{median[f'lp features {args.lp_epochs} epochs']:.1f} s; features / before: "
        f"{ratios(f'lp features {args.lp_epochs} epochs', f'lp pil {args.lp_epochs} epochs')}"
    )
    print(
        f"\nFT, 6 epochs with validation and a checkpoint every epoch: train_runtime {share['train_runtime_s']:.1f} s, "
        f"of which {share['outside_share']:.1%} outside the epochs' training loops"
    )
    if args.json:
        args.json.write_text(json.dumps({"raw_seconds": raw, "evaluation_share": share, **vars(args)}, default=str))


def setting(args: argparse.Namespace, train_images: int) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return (
        f"{args.model} at {args.image_size} px, batch {args.batch_size}, {args.epochs} epochs of "
        f"{train_images} images, {'bf16' if args.bf16 else 'fp32'}, {device}"
    )


def report_interleaved(bench: Bench, strategies: list[str], args: argparse.Namespace) -> None:
    """Each strategy's step time over FT's, per round (both measured within seconds of each other) and median."""
    strategies = ["ft", *[name for name in strategies if name != "ft"]]
    seconds = bench.interleaved_steps(strategies, args.epochs, args.interleaved_rounds, steps=5)
    print(f"\n{setting(args, bench.train_images)}, {args.interleaved_rounds} interleaved rounds of 5 steps each")
    print("\n| strategy | step (ms, median) | step vs FT (median of the rounds' ratios) | range of the ratios |")
    print("|---|---|---|---|")
    for strategy, values in seconds.items():
        ratios = [a / b for a, b in zip(values, seconds["ft"], strict=True)]
        print(
            f"| {strategy} | {statistics.median(values) * 1000:.0f} | {statistics.median(ratios):.3f} | "
            f"{min(ratios):.2f}-{max(ratios):.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"step_seconds": seconds, **vars(args)}, default=str))


def report_paired(
    bench: Bench, strategies: list[str], args: argparse.Namespace, labels: tuple[str, str], options: tuple[dict, dict]
) -> None:
    """Whole `train()` time of each strategy's run with the second `options` (`project_seconds` keywords) over the
    same run with the first, per pair run back to back."""
    bench.project_seconds("ft", 1)  # warm-up
    seconds: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for strategy in strategies:
            for label, option in zip(labels, options, strict=True):
                elapsed = bench.project_seconds(strategy, args.epochs, **option)[0]
                seconds.setdefault(f"{strategy} {label}", []).append(elapsed)
                print(f"  repeat {repeat + 1}: {strategy} {label} {elapsed:.1f} s", flush=True)
    print(f"\n{setting(args, bench.train_images)}, {args.repeats} paired repeats")
    print(f"\n| strategy | {labels[0]} (s, median) | {labels[1]} (s, median) | {labels[1]} / {labels[0]} (per pair) |")
    print("|---|---|---|---|")
    for strategy in strategies:
        before, after = seconds[f"{strategy} {labels[0]}"], seconds[f"{strategy} {labels[1]}"]
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        print(
            f"| {strategy} | {statistics.median(before):.1f} | {statistics.median(after):.1f} | "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f" (median {statistics.median(ratios):.2f}) |"
        )
    if args.json:
        args.json.write_text(json.dumps({"train_seconds": seconds, **vars(args)}, default=str))


def report_throughput(bench: Bench, args: argparse.Namespace) -> None:
    """FT training images/s (median of the repeats, steps and data pipeline) and evaluation images/s, printed as a
    grid file's `images_per_second` entry."""
    bench.project_seconds("ft", 1)  # warm-up
    train = [bench.project_seconds("ft", args.epochs)[0] for _ in range(args.repeats)]
    train_rate = bench.train_images * args.epochs / statistics.median(train)
    eval_rate = bench.evaluation_images_per_second(args.repeats)
    print(f"\n{setting(args, bench.train_images)}, {args.repeats} repeats")
    print(f"{Path(args.model).name}: {{train: {train_rate:.0f}, eval: {eval_rate:.0f}}}")
    if args.json:
        args.json.write_text(
            json.dumps({"train_seconds": train, "train": train_rate, "eval": eval_rate, **vars(args)}, default=str)
        )


if __name__ == "__main__":
    main()
