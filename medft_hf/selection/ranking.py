"""The search's outcome as people and scripts read it: every trial with its validation score at each rung and the
budget it used, the configuration chosen and why, and the final runs' test scores.

The choice follows the one-standard-error rule (Hastie, Tibshirani & Friedman, The Elements of Statistical Learning,
7.10): configurations whose validation score lies within one standard error of the best one's cannot be told apart
on that validation split, and among them the one that departs least from the library's defaults is kept, here the
one with the default augmentation. Departing from a default should take evidence beyond the noise of a few hundred
validation images."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..data import DEFAULT_AUGMENTATION
from ..errors import MedftError
from ..metrics import balanced_accuracy_standard_error
from ..results import RESULTS_FILE, RunResult, write_json_atomic, write_text_atomic
from .space import SearchSpace, flags_of
from .storage import EPOCHS, ERROR, RETRY_OF, SECONDS, first_number

RANKING_JSON, RANKING_MD = "ranking.json", "ranking.md"
TIE_BREAKS = ("defaults", "score")  # among configurations validation cannot tell apart: see the module's docstring


@dataclass
class TrialRecord:
    number: int
    state: str
    configuration: dict[str, Any]  # train flags
    scores: dict[int, float]  # rung epochs -> validation balanced accuracy
    epochs: int  # budget used: epochs trained by this trial (reused runs cost nothing)
    seconds: float
    folder: str | None
    note: str = ""
    standard_error: float | None = None  # of the score at the longest rung, from that run's validation confusion matrix

    @property
    def top(self) -> tuple[int, float]:
        """(epochs, score) at the longest rung this trial reached."""
        epochs = max(self.scores)
        return epochs, self.scores[epochs]


@dataclass
class Choice:
    trial: TrialRecord
    reason: str
    tied: list[int] = field(default_factory=list)  # trials within one standard error of the best score, best first


@dataclass
class Ranking:
    trials: list[TrialRecord]  # best first
    choice: Choice
    budget: dict[str, Any]
    final: list[dict[str, Any]] = field(default_factory=list)  # per seed: folder and test metrics

    @classmethod
    def load(cls, folder: str | Path) -> Ranking:
        """The ranking a search wrote to `folder`/ranking.json, typed as it was written."""
        path = Path(folder) / RANKING_JSON
        if not path.is_file():
            raise MedftError(f"{folder}: no {RANKING_JSON} (a search writes it once it has chosen).")
        data = json.loads(path.read_text())

        def trial(record: dict[str, Any]) -> TrialRecord:  # JSON's keys are strings; a rung's is its epoch count
            return TrialRecord(**{**record, "scores": {int(k): v for k, v in record["scores"].items()}})

        choice = Choice(**{**data["choice"], "trial": trial(data["choice"]["trial"])})
        return cls(trials=[trial(t) for t in data["trials"]], choice=choice, budget=data["budget"], final=data["final"])


def records(study: optuna.Study, space: SearchSpace, trials_dir: Path) -> list[TrialRecord]:
    """Every trial, best first: longest rung reached, then the score there; trials without a score last."""
    epochs_at_step = {space.pruning_step(k): epochs for k, epochs in enumerate(space.rungs)}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.WAITING, TrialState.RUNNING):
            continue
        record = TrialRecord(
            number=trial.number,
            state=trial.state.name.lower(),
            configuration=flags_of(trial.params),
            scores={epochs_at_step[step]: value for step, value in trial.intermediate_values.items()},
            epochs=trial.user_attrs.get(EPOCHS, 0),
            seconds=round(trial.user_attrs.get(SECONDS, 0.0), 1),
            folder=trial.user_attrs.get("folder"),
            note=_note(trial, study),
        )
        if record.scores and record.folder:
            record.standard_error = _standard_error(trials_dir / record.folder / f"e{record.top[0]}")
        rows.append(record)
    return sorted(rows, key=lambda r: _rank(r) if r.scores else (-1, 0.0, -r.number), reverse=True)


def _standard_error(run: Path) -> float | None:
    validation = RunResult.load(run).validation if (run / RESULTS_FILE).is_file() else {}
    matrix = validation.get("confusion_matrix")
    return round(balanced_accuracy_standard_error(matrix), 6) if matrix else None


def _note(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> str:
    if ERROR in trial.user_attrs:
        return f"failed: {trial.user_attrs[ERROR]}"
    if trial.state == TrialState.FAIL:
        first = first_number(trial)
        retries = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(RETRY_OF) == first]
        return f"interrupted; continued as trial {retries[-1]}" if retries else "interrupted"
    if trial.user_attrs.get("stopped") == "budget":
        return "stopped: the next rung did not fit the budget"
    if trial.state == TrialState.PRUNED:
        return "pruned by successive halving"
    return ""


def choose(trials: list[TrialRecord], final_epochs: int, tie_break: str = "defaults") -> Choice:
    """Among the configurations that reached the longest rung any reached: the best validation score, or with
    `tie_break` "defaults", of those within one standard error of it, the best with the default augmentation."""
    scored = sorted((t for t in trials if t.scores and t.state != "fail"), key=_rank, reverse=True)
    if not scored:
        raise MedftError("no trial finished a run: nothing to choose from (see the trials' folders for errors).")
    best, rivals = scored[0], scored[1:]
    epochs, score = best.top
    rivals = [t for t in rivals if t.top[0] == epochs]
    error = best.standard_error or 0.0
    # the tolerance: equal balanced accuracies computed in another order differ in the last bit
    tied = [best, *(t for t in rivals if t.top[1] >= score - error - 1e-9)]
    chosen = best
    if len(tied) == 1:
        reason = (
            f"highest validation balanced accuracy ({score:.4f}) at {epochs} epochs among the {len(rivals) + 1} "
            "configurations trained that long"
        )
        if rivals:
            runner_up = rivals[0]
            strategy = runner_up.configuration["strategy"]
            reason += f"; next: trial {runner_up.number} ({strategy}, {runner_up.top[1]:.4f})"
    else:
        reason = (
            f"{len(tied)} of the {len(rivals) + 1} configurations trained {epochs} epochs score within one standard "
            f"error ({error:.4f}) of the best validation balanced accuracy ({score:.4f}, trial {best.number}), so "
            "validation cannot tell them apart"
        )
        usual = [t for t in tied if _augmentation(t) == DEFAULT_AUGMENTATION]
        if tie_break != "defaults":
            reason += "; the best score is kept (--tie_break score)"
        elif not usual:
            reason += f"; none of them uses the default augmentation ({DEFAULT_AUGMENTATION}), so the best is kept"
        else:
            chosen = usual[0]
            reason += f"; of those, the best with the default augmentation ({DEFAULT_AUGMENTATION}) is kept" + (
                f": trial {chosen.number} ({chosen.top[1]:.4f})" if chosen is not best else ", the best itself"
            )
    if epochs < final_epochs:
        reason += f". No configuration reached the full {final_epochs} epochs within the search budget"
    return Choice(chosen, reason + ".", [t.number for t in tied])


def _rank(trial: TrialRecord) -> tuple[int, float, int]:
    """Longest rung reached, then the score there, then the earlier trial."""
    return (*trial.top, -trial.number)


def _augmentation(trial: TrialRecord) -> str:
    """The trial's augmentation (one the user fixed is the same for every trial, so it decides nothing)."""
    return trial.configuration.get("augmentation", DEFAULT_AUGMENTATION)


def final_rows(results: list[tuple[Path, RunResult]], output_dir: Path) -> list[dict[str, Any]]:
    return [
        {"seed": r.seed, "folder": str(folder.relative_to(output_dir)), "validation": _headline(r.validation),
         "test": _headline(r.test) if r.test else None, "trained_in": r.trained_in}
        for folder, r in results
    ]  # fmt: skip


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: metrics[key] for key in ("balanced_accuracy", "auroc", "macro_f1", "accuracy") if key in metrics}


def write(ranking: Ranking, output_dir: Path) -> None:
    write_json_atomic(output_dir / RANKING_JSON, asdict(ranking))
    write_text_atomic(output_dir / RANKING_MD, markdown(ranking))


def _earlier(budget: dict[str, Any]) -> str:
    """The final runs of a configuration an earlier run of the search chose, where there are any."""
    earlier = budget.get("earlier_finals_used")
    return f" ({earlier} on those of an earlier choice)" if earlier else ""


def markdown(ranking: Ranking) -> str:
    chosen = ranking.choice.trial
    budget = ranking.budget
    lines = [
        "# medft-select: ranking",
        "",
        f"Budget {budget['budget']}: {budget['search_used']} spent on the search, {budget['final_used']} on the "
        f"final runs{_earlier(budget)}. Scores are validation balanced accuracy at the best epoch of each run; "
        "every rung is a complete schedule of that many epochs.",
        "",
        f"**Chosen**: trial {chosen.number}, `{_configuration(chosen.configuration)}`: {ranking.choice.reason}",
        "",
    ]
    tests = [row["test"]["balanced_accuracy"] for row in ranking.final if row["test"]]
    if tests:
        spread = f" ± {statistics.stdev(tests):.4f} (sd over {len(tests)} seeds)" if len(tests) > 1 else ""
        reused = ""
        if ranking.final[0].get("trained_in"):
            reused = " (the chosen trial's own run, tested: it trained with these flags on seed 0)"
        lines += [
            f"Final runs ({len(ranking.final)} seed{'s' if len(ranking.final) > 1 else ''}; `model/` is seed 0"
            f"{reused}): test balanced accuracy {statistics.mean(tests):.4f}{spread}, the test split evaluated once "
            "per final run.",
            "",
        ]
    rungs = sorted({epochs for t in ranking.trials for epochs in t.scores})
    lines += [
        "| rank | trial | configuration | " + " | ".join(f"{e} ep" for e in rungs) + " | epochs | seconds | note |",
        "|---|---|---|" + "---|" * len(rungs) + "---|---|---|",
    ]
    for rank, t in enumerate(ranking.trials, 1):
        scores = " | ".join(f"{t.scores[e]:.4f}" if e in t.scores else "" for e in rungs)
        note = "; ".join(filter(None, [_marks(t.number, ranking.choice), t.note]))
        lines.append(
            f"| {rank} | {t.number} | `{_configuration(t.configuration)}` | {scores} | {t.epochs} | {t.seconds:.0f} "
            f"| {note} |"
        )
    return "\n".join(lines) + "\n"


def _marks(number: int, choice: Choice) -> str:
    """Which row was trained, which scored best, and which validation could not tell from the best."""
    marks = ["**chosen**"] if number == choice.trial.number else []
    if choice.tied and number == choice.tied[0] and number != choice.trial.number:
        marks.append("best validation score")
    elif number in choice.tied[1:]:
        marks.append("within one standard error of the best")
    return ", ".join(marks)


def _configuration(configuration: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in configuration.items())
