"""Run a study grid: `python scripts/benchmark.py cpu` (also `medft-benchmark`; works under `accelerate launch`)."""

from medft_hf.study import main

if __name__ == "__main__":
    main()
