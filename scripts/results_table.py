"""Print a Markdown table of the test metrics in every results.json under a folder (one row per run)."""

import json
import sys
from pathlib import Path

COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def main(root: str) -> None:
    print("| strategy | " + " | ".join(COLUMNS) + " | epochs | train time (s) |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for path in sorted(Path(root).glob("*/results.json")):
        results = json.loads(path.read_text())
        metrics = results["test"] or results["validation"]
        cells = " | ".join(f"{metrics[name]:.3f}" for name in COLUMNS)
        print(f"| {results['strategy']} | {cells} | {len(results['history'])} | {results['train_runtime_s']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
