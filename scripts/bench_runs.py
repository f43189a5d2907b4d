"""Whole training runs, timed in pairs: what one protocol costs against another from the first line of the run to its
`results.json`, everything a user waits for included (loading, a feature pass, evaluation), the interpreter's start
and imports excluded (both protocols run in this one process, so those are paid once). The Trainer's own
`train_runtime_s` (the epochs alone) is recorded beside it.

    python scripts/bench_runs.py --repeats 4 --output docs/performance/runs-cpu-lite0-64px-lpft-stored-probe \\
        --first "--strategy ft --num_train_epochs 8" \\
        --second "--strategy lpft --num_train_epochs 9 --lp_epochs 1 --cache_features" \\
        -- --model ../shared/hub/tf_efficientnet_lite0.in1k_mli --dataset ../shared/data/lc25000-lung-histology \\
        --image_size 64 --max_train_samples 600 --per_device_train_batch_size 32 --use_cpu --save_model false

The arguments after `--` go to both protocols. The two runs of a pair go back to back, the first protocol first in
even pairs and second in odd ones, so that neither always has the warmer or the cooler machine (absolute speeds move
between minutes: compare the ratios of pairs); a fresh output folder every time, so nothing resumes. Writes
<output>.txt (the table) and <output>.json (the raw seconds).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from medft_hf.results import RunResult
from medft_hf.train import main as train

KINDS = ("whole run", "train_runtime_s")  # what `timed_run` returns, in its order


def timed_run(arguments: list[str], folder: Path) -> tuple[float, float]:
    """(seconds from the call to `results.json`, the run's `train_runtime_s`)."""
    start = time.perf_counter()
    train([*arguments, "--output_dir", str(folder)])
    return time.perf_counter() - start, RunResult.load(folder).train_runtime_s


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    own_argv, shared = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", required=True, help="the first protocol's own arguments, quoted")
    parser.add_argument("--second", required=True, help="the second protocol's own arguments, quoted")
    parser.add_argument("--repeats", type=int, default=4, help="pairs (even, so that each protocol leads as often)")
    parser.add_argument("--output", type=Path, required=True, help="path without suffix for .txt and .json")
    args = parser.parse_args(own_argv)
    protocols = {"first": shlex.split(args.first), "second": shlex.split(args.second)}
    # seconds[kind][protocol]: one entry per pair, for the whole run and for the Trainer's epochs alone
    seconds: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in protocols} for kind in KINDS}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name in list(protocols)[:: 1 if repeat % 2 == 0 else -1]:
                timings = timed_run([*protocols[name], *shared], Path(scratch) / f"{name}-{repeat}")
                for kind, value in zip(KINDS, timings, strict=True):
                    seconds[kind][name].append(value)
    ratios = {
        kind: [second / first for first, second in zip(times["first"], times["second"], strict=True)]
        for kind, times in seconds.items()
    }
    lines = [
        f"shared arguments: {shlex.join(shared)}",
        *(f"{name}: {shlex.join(own)}" for name, own in protocols.items()),
        "order: " + ", ".join("first, second" if r % 2 == 0 else "second, first" for r in range(args.repeats)),
    ]
    for kind, times in seconds.items():
        lines += [f"{name}, {kind} (s): " + ", ".join(f"{s:.1f}" for s in times[name]) for name in protocols]
        per_pair = ", ".join(f"{r:.3f}" for r in ratios[kind])
        lines.append(f"second / first, {kind}, per pair: {per_pair} (median {statistics.median(ratios[kind]):.3f})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    record = {"shared": shared, "protocols": protocols, "seconds": seconds["whole run"],
              "train_runtime_s": seconds["train_runtime_s"], "ratios": ratios}  # fmt: skip
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
