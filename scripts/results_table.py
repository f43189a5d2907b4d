"""Print a Markdown table of the test metrics in every results.json under a folder (one row per run)."""

import sys
from pathlib import Path

from medft_hf.results import METRICS, RESULTS_FILE, RunResult


def main(root: str) -> None:
    print("| strategy | " + " | ".join(METRICS) + " | epochs | train time (s) |")
    print("|---" * (len(METRICS) + 3) + "|")
    for path in sorted(Path(root).glob(f"*/{RESULTS_FILE}")):
        result = RunResult.load(path)
        cells = " | ".join(f"{result.metrics[name]:.3f}" for name in METRICS)
        print(f"| {result.strategy} | {cells} | {len(result.history)} | {result.train_runtime_s:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
