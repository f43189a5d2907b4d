"""Choose the fine-tuning strategy (and its learning rate, augmentation and knobs) for a dataset within a budget.

    medft-select --model timm/tf_efficientnet_lite0.in1k --dataset <hub id or folder> --budget 2h --output_dir sel

The recipe: check everything and refuse a budget too small to try every strategy once (nothing is written before);
search on the validation split with Optuna (successive halving over complete schedules of growing length, see
medft_hf/selection/trials.py); choose by the one-standard-error rule (medft_hf/selection/ranking.py); train the
chosen configuration for the full --num_train_epochs on as many seeds as the budget allows, evaluating the test split
once per final run; write the ranking and link `model/` to seed 0.
Any other flag is a train.py flag: passed, it is fixed for every run; a searched one (--learning_rate,
--augmentation, --sp_alpha, --ft_learning_rate) is then not searched.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import transformers
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from .errors import MedftError, exit_on_error
from .evaluation import can_test_later, evaluate_finished_run
from .modeling import architecture_layout
from .results import RunResult, is_finished_run
from .selection import ranking as ranking_lib
from .selection.budget import Budget, Plan, plan
from .selection.space import SearchSpace, flags_of
from .selection.storage import (
    ERROR,
    ended,
    measured_seconds_per_epoch,
    open_storage,
    open_study,
    queued,
    requeue_interrupted,
    seconds_per_epoch,
    spent,
    wait_for_other_workers,
)
from .selection.trials import Objective, run_once, trial_flags
from .strategies import STRATEGIES, strategy_config_classes
from .study import train_resumably
from .train import (
    DataArguments,
    HelpFormatter,
    MedftTrainingArguments,
    ModelArguments,
    parse_command_line,
    parse_dict,
)

logger = logging.getLogger("medft_hf")
# A trial that raises (out of memory, say) is recorded and the search goes on. Once every strategy has failed since
# the last trial that did not (and at least this many trials), the cause is the data's, the machine's or the flags',
# not one configuration's, and the search ends: failing trials cost no budget, so it would never end by itself.
FEWEST_FAILURES_TO_STOP = 3
# Set by the search for every run, so not flags a user may pass.
TRIALS = "trials"  # the search's runs, a folder each, inside --output_dir
SEARCH_OWNS = ("strategy", "seed", "output_dir", "skip_test", "resume_from_checkpoint", "overwrite_output_dir")
# train.py flags a search cannot pass to every run, with what to do instead (refused unless at their defaults).
REFUSED = {
    "push_to_hub": (False, "every trial and final run would push; push the chosen model once the search is done: "
                           "medft-push model OUTPUT_DIR/model --repo_id ..."),
    "max_steps": (-1, "every rung is a complete schedule of whole epochs; give --num_train_epochs instead"),
}  # fmt: skip


@dataclass
class SelectArguments:
    budget: str = field(
        metadata={"help": "Epochs summed over every run (60ep), or worker time (90s, 30m, 2h), final runs included."}
    )
    strategies: list[str] = field(
        default_factory=lambda: list(STRATEGIES),
        metadata={"help": "The strategies searched (default: all).", "choices": list(STRATEGIES)},
    )
    storage: str | None = field(
        default=None,
        metadata={"help": "The Optuna database URL that workers share (default: sqlite:///OUTPUT_DIR/search.db)."},
    )
    seeds: int = field(default=3, metadata={"help": "Final runs of the chosen configuration, if the budget allows."})
    search_seed: int = field(
        default=0,
        metadata={"help": "Seeds the sampler that proposes trials, so a search run again from scratch on one worker "
                  "proposes the same configurations (workers that join a search sample unseeded)."},
    )  # fmt: skip
    reduction_factor: int = field(
        default=3, metadata={"help": "Successive halving's η: each rung is η times longer and keeps 1/η of trials."}
    )
    tie_break: str = field(
        default="defaults",
        metadata={
            "help": "Configurations within one standard error of the best validation score cannot be told apart on "
            "validation: 'defaults' keeps the best of them with the default augmentation, 'score' the best.",
            "choices": list(ranking_lib.TIE_BREAKS),
        },
    )


@dataclass
class Selection:
    """What a search produced (also written as ranking.json / ranking.md)."""

    ranking: ranking_lib.Ranking
    model_dir: Path
    final: list[RunResult]


def select(args: SelectArguments, flags: dict[str, Any]) -> Selection:
    """Search, choose and train the final model; `flags` are train.py arguments (output_dir the search's folder)."""
    owned = sorted(set(flags) & set(SEARCH_OWNS) - {"output_dir"})
    if owned:
        raise MedftError(f"{', '.join('--' + name for name in owned)}: set by the search for each run; drop them.")
    for name, (default, instead) in REFUSED.items():
        if flags.get(name, default) != default:
            raise MedftError(f"--{name} {flags[name]}: not in a search: {instead}.")
    if not flags.get("output_dir"):
        raise MedftError("--output_dir: required (the search's runs, database and ranking go there).")
    if args.seeds < 1 or args.reduction_factor < 2:
        raise MedftError("--seeds must be >= 1 and --reduction_factor >= 2.")
    output_dir = Path(flags["output_dir"])
    # Trial runs log one line per epoch, no bars (the search has its own); stored so in the search's settings, as
    # searches begun from the command line always did, whoever starts or continues it.
    base = {**{key: value for key, value in flags.items() if key != "output_dir"}, "disable_tqdm": True}
    model_args, _, _, training_args = parse_dict(base)  # every flag checked now, before anything is written
    final_epochs = math.ceil(training_args.num_train_epochs)
    if final_epochs != training_args.num_train_epochs:
        raise MedftError(
            f"--num_train_epochs {training_args.num_train_epochs:g}: a search's rungs and final runs are whole epochs;"
            " give a whole number."
        )
    space = SearchSpace.build(
        args.strategies, base, architecture_layout(model_args.model), final_epochs, args.reduction_factor
    )
    budget = Budget.parse(args.budget)
    url = args.storage or f"sqlite:///{(output_dir / 'search.db').resolve()}"
    rate = _seconds_per_epoch(budget, space, base, url)
    split = plan(budget, space.rungs[0], len(space.strategies), final_epochs, args.seeds, rate)

    output_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url)
    # --search_seed is not a setting of the search: it seeds only the worker that creates it (see open_study).
    settings = {"flags": base, "strategies": space.strategies, "rungs": space.rungs, "eta": args.reduction_factor}
    study = open_study(storage, settings, space, args.reduction_factor, args.search_seed)
    requeue_interrupted(study)
    # A dead worker's trial is queued again once its heartbeat is found stale, possibly while this worker waits for
    # the others at the end: the search goes on until no trial runs and none waits.
    while True:
        _search(study, space, split, base, output_dir)
        wait_for_other_workers(study)
        if not queued(study):
            break

    trials = ranking_lib.records(study, space, output_dir / TRIALS)
    choice = ranking_lib.choose(trials, final_epochs, args.tie_break)
    search_used = spent(study, budget.unit)
    measured = seconds_per_epoch(study, split.seconds_per_epoch)
    earlier = _earlier_finals_cost(output_dir, _final_folder(output_dir, choice.trial), budget, measured)
    final = _train_final(
        choice.trial,
        split,
        budget.amount - search_used - earlier,
        measured,
        base,
        training_args,
        output_dir,
        args.seeds,
    )
    model_dir = output_dir / "model"
    _link(model_dir, final[0][0])
    final_used = budget.cost(final_epochs * sum(r.trained_in is None for _, r in final), measured)
    result = ranking_lib.Ranking(
        trials=trials,
        choice=choice,
        budget={"budget": budget.describe(), "unit": budget.unit, "search_used": budget.describe(search_used),
                "final_used": budget.describe(final_used), "final_seeds": len(final),
                "final_from_search": sum(r.trained_in is not None for _, r in final), "rungs": list(space.rungs),
                **({"earlier_finals_used": budget.describe(earlier)} if earlier else {})},
        final=ranking_lib.final_rows(final, output_dir),
    )  # fmt: skip
    ranking_lib.write(result, output_dir)
    selection = {"trials": len(trials), "budget": budget.describe(), "reason": choice.reason}
    for folder, run_result in final:  # so the model card of every final model says how it was chosen
        run_result.selection = selection
        run_result.save(folder)
    return Selection(result, model_dir, [r for _, r in final])


def _seconds_per_epoch(budget: Budget, space: SearchSpace, base: dict[str, Any], url: str) -> float:
    """For a time budget: the seconds per epoch the search has measured so far, or, for a new search, timed on one
    short run outside the output folder (timing again on a rerun would spend time uncounted, and on a machine
    perhaps busier it would change the plan of a search under way)."""
    if budget.unit == "epochs":
        return float("nan")
    measured = measured_seconds_per_epoch(url)
    if measured is not None:
        return measured
    epochs = space.rungs[0]
    configuration = flags_of(space.starting_points()[0])
    with tempfile.TemporaryDirectory(prefix="medft-select-probe-") as folder:
        _, seconds = run_once({**trial_flags(base, configuration, epochs, 0), "skip_test": True}, Path(folder) / "run")
    return seconds / epochs


def _search(study: optuna.Study, space: SearchSpace, split: Plan, base: dict[str, Any], output_dir: Path) -> None:
    """Run trials until the search budget cannot pay for another first rung, or a trial's next rung did not fit (the
    search has ended there: see storage.ENDED_AT); a bar shows the budget and the best. A trial that fails is
    recorded (its error in the ranking, not retried) and the search goes on, unless every strategy fails."""
    unit = split.budget.unit
    failures: dict[str, str] = {}  # strategy -> its last error, in this worker's trials since its last that worked
    failed_in_a_row = 0
    bar = tqdm(total=round(split.search_budget, 1), unit="ep" if unit == "epochs" else "s", desc="medft-select")

    def refresh() -> None:
        bar.n = round(spent(study, unit), 1)
        scored = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
        if scored:
            best = max(scored, key=lambda t: (t.last_step, t.intermediate_values[t.last_step]))
            bar.set_postfix_str(f"best: trial {best.number} {best.params['strategy']} "
                                f"{best.intermediate_values[best.last_step]:.4f}")  # fmt: skip
        bar.refresh()

    def another_trial_fits() -> bool:
        """An interrupted trial queued again always continues (each of its rungs is still checked against the
        budget); a new one only if its first rung fits and the search has not ended."""
        if queued(study):
            return True
        cost = split.budget.cost(space.rungs[0], seconds_per_epoch(study, split.seconds_per_epoch))
        return spent(study, unit) + cost <= split.search_budget + 1e-9 and not ended(study, split.budget)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal failed_in_a_row
        refresh()
        if ERROR in trial.user_attrs:
            failed_in_a_row += 1
            failures[trial.params.get("strategy", "?")] = f"trial {trial.number}: {trial.user_attrs[ERROR]}"
            logger.warning("trial %d failed (%s); the search goes on", trial.number, trial.user_attrs[ERROR])
        else:
            failed_in_a_row = 0
            failures.clear()
        if every_strategy_failed() or not another_trial_fits():
            study.stop()

    def every_strategy_failed() -> bool:
        return set(failures) >= set(space.strategies) and failed_in_a_row >= FEWEST_FAILURES_TO_STOP

    objective = Objective(space, split, base, output_dir / TRIALS, refresh)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with bar:  # closed also when interrupted, so a rerun's bar starts on a clean line
        refresh()
        if another_trial_fits():
            study.optimize(objective, callbacks=[after_trial], gc_after_trial=True, catch=(Exception,))
    if every_strategy_failed():
        errors = "; ".join(f"{strategy}: {error}" for strategy, error in failures.items())
        raise MedftError(
            f"every strategy failed in the last {failed_in_a_row} trials ({errors}). If the cause is the machine's "
            "(memory, disk), fix it and run the same command again: finished trials are kept. If it is a flag's "
            "(the data, the batch size), a search with other flags needs another --output_dir (or --storage)."
        )


def _train_final(
    chosen: ranking_lib.TrialRecord, split: Plan, left: float, seconds_per_epoch: float, base: dict[str, Any],
    training_args: MedftTrainingArguments, output_dir: Path, seeds: int,
) -> list[tuple[Path, RunResult]]:  # fmt: skip
    """The chosen configuration at the full epoch count, on as many seeds (up to `seeds`) as the budget `left` pays
    (at least one: the plan reserved it). Seed 0 is the chosen trial's own run when it trained the full epoch count
    and kept its model (trials run on seed 0 with the same flags): tested, not trained a second time."""
    trained = output_dir / TRIALS / (chosen.folder or "") / f"e{split.final_epochs}"
    folder = _final_folder(output_dir, chosen)
    first = folder / "seed0"
    if is_finished_run(first):  # a rerun: seed 0 is what it was (trained by an older version, or tested)
        reused = RunResult.load(first).trained_in is not None
    else:
        reused = bool(chosen.folder) and can_test_later(trained, training_args)
    affordable = math.floor(left / split.budget.cost(split.final_epochs, seconds_per_epoch) + 1e-9) + reused
    final = []
    for seed in range(max(1, min(seeds, affordable))):
        flags = trial_flags(base, chosen.configuration, split.final_epochs, seed)
        make = partial(evaluate_finished_run, trained) if seed == 0 and reused else train_resumably
        final.append((folder / f"seed{seed}", run_once(flags, folder / f"seed{seed}", make)[0]))
    return final


def _final_folder(output_dir: Path, chosen: ranking_lib.TrialRecord) -> Path:
    return output_dir / "final" / (chosen.folder or f"{chosen.number:03d}")


def _earlier_finals_cost(output_dir: Path, chosen: Path, budget: Budget, seconds_per_epoch: float) -> float:
    """What the final runs of another configuration, chosen by an earlier run of the search (a larger --budget can
    change the choice), trained: the budget counts every run, each costed as the chosen final runs are. Runs read
    back from a trial cost nothing."""
    epochs = sum(
        result.num_train_epochs
        for folder in sorted((output_dir / "final").glob("*/seed*"))
        if folder.parent != chosen and is_finished_run(folder)
        for result in [RunResult.load(folder)]
        if result.trained_in is None
    )
    return budget.cost(epochs, seconds_per_epoch)


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target` (relative, replaced atomically: a rerun that chooses another configuration)."""
    temporary = link.with_name(f".{link.name}.tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    temporary.replace(link)


def _parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        [SelectArguments, ModelArguments, DataArguments, *strategy_config_classes(), MedftTrainingArguments],
        prog="medft-select",
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # an abbreviated flag would be parsed but not recognised as given, so not fixed
    )
    # train.py's flags as a search takes them: those it sets for each run stay parsed (to be refused by name) but
    # leave the help, and --output_dir is the search's own folder. argparse has no public way to change an added
    # option's help, hence its `_actions`.
    for action in parser._actions:
        if (action.dest in SEARCH_OWNS or action.dest in REFUSED) and action.dest != "output_dir":
            action.help = argparse.SUPPRESS
    output_dir = parser._option_string_actions["--output_dir"]
    output_dir.help = "Required: the search's folder (its trials, database, ranking, final runs and model/ link)."
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[SelectArguments, dict[str, Any]]:
    """The search's own arguments, and the train.py flags given on the command line (typed), by name."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    select_args, *parsed = parse_command_line(parser, argv)
    # Each option as the parser knows it: `--no_cache_images` and `--num-train-epochs` name their fields too.
    options = parser._option_string_actions
    given = {options[name].dest for name in (token.split("=")[0] for token in argv) if name in options}
    own = {f.name for f in fields(SelectArguments)}
    flags = {
        name: getattr(container, name)
        for name in given - own
        for container in parsed
        if name in {f.name for f in fields(container)}
    }
    return select_args, flags


def main(argv: list[str] | None = None) -> None:
    transformers.utils.logging.set_verbosity_error()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    with exit_on_error():
        select_args, flags = parse_args(argv)
        selection = select(select_args, flags)
    choice = selection.ranking.choice
    print(f"chosen: trial {choice.trial.number} {choice.trial.configuration}: {choice.reason}")
    print(f"model: {selection.model_dir}; ranking: {Path(flags['output_dir']) / ranking_lib.RANKING_MD}")


if __name__ == "__main__":
    main()
