"""`accelerate launch train.py --strategy lpft ...`: see `python train.py --help`.

The recipe itself lives in `medft_hf/train.py` so that the study runner and the `medft-train` command run
exactly the same code.
"""

from medft_hf.train import main

if __name__ == "__main__":
    main()
