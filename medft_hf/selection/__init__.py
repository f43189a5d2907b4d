"""The pieces of `medft-select` (medft_hf/select.py): the budget, the search space, the Optuna study that remembers
the search, a trial as rung runs, and the ranking."""
