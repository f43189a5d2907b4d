"""Whole training runs, timed in pairs: what one protocol costs against another from the first line of the run to its
`results.json`, everything a user waits for included (loading, a feature pass, evaluation), the interpreter's start
and imports excluded (both protocols run in this one process, so those are paid once).

    python scripts/bench_runs.py --repeats 3 --output docs/performance/runs-cpu-lite0-64px-lpft-stored-probe \\
        --first "--strategy ft --num_train_epochs 8" \\
        --second "--strategy lpft --num_train_epochs 9 --lp_epochs 1 --cache_features" \\
        -- --model ../shared/hub/tf_efficientnet_lite0.in1k_mli --dataset ../shared/data/lc25000-lung-histology \\
        --image_size 64 --max_train_samples 600 --use_cpu --save_model false --bootstrap_resamples 0

The arguments after `--` go to both protocols. Each repeat runs the first protocol and then the second, back to back
(absolute speeds move between minutes: compare the ratios of pairs); a fresh output folder every time, so nothing
resumes. Writes <output>.txt (the table) and <output>.json (the raw seconds).
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

from medft_hf.train import main as train


def timed_run(arguments: list[str], folder: Path) -> float:
    start = time.perf_counter()
    train([*arguments, "--output_dir", str(folder)])
    return time.perf_counter() - start


def main() -> None:
    argv = sys.argv[1:]
    shared = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", required=True, help="the first protocol's own arguments, quoted")
    parser.add_argument("--second", required=True, help="the second protocol's own arguments, quoted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True, help="path without suffix for .txt and .json")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    protocols = {"first": shlex.split(args.first), "second": shlex.split(args.second)}
    seconds: dict[str, list[float]] = {name: [] for name in protocols}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name, own in protocols.items():
                seconds[name].append(timed_run([*own, *shared], Path(scratch) / f"{name}-{repeat}"))
    ratios = [second / first for first, second in zip(seconds["first"], seconds["second"], strict=True)]
    lines = [
        f"shared arguments: {shlex.join(shared)}",
        *(f"{name}: {shlex.join(own)}" for name, own in protocols.items()),
        *(f"{name} (s): " + ", ".join(f"{s:.1f}" for s in seconds[name]) for name in protocols),
        f"second / first, per pair: {', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    record = {"shared": shared, "protocols": protocols, "seconds": seconds, "ratios": ratios}
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
