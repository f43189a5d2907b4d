"""medft-select: a tiny search end to end, resuming after an interruption, two workers on one database, and the
budget refusal. Tiny model and images; every run is 1 or 2 epochs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import write_hub_dataset

from medft_hf import select as select_lib
from medft_hf import train as train_lib
from medft_hf.errors import MedftError
from medft_hf.hub import model_card
from medft_hf.metrics import balanced_accuracy_standard_error
from medft_hf.modeling import BlockLayout
from medft_hf.results import RunResult
from medft_hf.selection import storage as storage_lib
from medft_hf.selection.budget import Budget
from medft_hf.selection.ranking import Ranking, TrialRecord, choose
from medft_hf.selection.space import SearchSpace, rung_epochs
from medft_hf.selection.storage import ENDED_AT, RETRY_OF, STUDY_NAME, ended, requeue

ROOT = Path(__file__).resolve().parents[1]


def train_flags(tiny_model: Path, tiny_dataset: Path, output_dir: Path) -> dict:
    return {
        "model": str(tiny_model),
        "dataset": str(tiny_dataset),
        "output_dir": str(output_dir),
        "image_size": 32,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 16,
        "bootstrap_resamples": 0,
        "use_cpu": True,
    }


def search(tiny_model, tiny_dataset, output_dir, budget="8ep", seeds=1) -> select_lib.Selection:
    args = select_lib.SelectArguments(budget=budget, strategies=["ft", "lp"], seeds=seeds, reduction_factor=2)
    return select_lib.select(args, train_flags(tiny_model, tiny_dataset, output_dir))


def study_of(output_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{output_dir / 'search.db'}")


def run_folders(output_dir: Path) -> dict[Path, float]:
    """Every finished trial run, with its results.json's modification time."""
    return {p.parent: p.stat().st_mtime_ns for p in (output_dir / "trials").glob("*/e*/results.json")}


def test_every_spelling_of_a_train_flag_fixes_it():
    _, flags = select_lib.parse_args(
        ["--budget", "60ep", "--output_dir", "x", "--no_cache_images", "--num-train-epochs", "3",
         "--cache_features", "--learning_rate=0.001"]
    )  # fmt: skip
    assert flags == {"output_dir": "x", "cache_images": False, "num_train_epochs": 3, "cache_features": True,
                     "learning_rate": 0.001}  # fmt: skip
    for wrong in ("--learning_r", "--no_such_flag"):  # an abbreviation would be parsed, yet not seen as given
        with pytest.raises(SystemExit) as refused:
            select_lib.parse_args(["--budget", "60ep", wrong, "0.001"])
        assert refused.value.code == 2


def test_help_shows_only_the_flags_a_search_takes(capsys):
    with pytest.raises(SystemExit):
        select_lib.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--budget" in shown and "--learning_rate" in shown and "--ft_learning_rate" in shown
    assert "Required: the search's folder" in shown and "outputs/<strategy>" not in shown
    for owned in ("--strategy ", "--seed ", "--skip_test", "--resume_from_checkpoint", "--overwrite_output_dir"):
        assert owned not in shown


def test_budget_and_rungs():
    assert Budget.parse("60ep") == Budget(60, "epochs")
    assert Budget.parse("2h") == Budget(7200, "seconds")
    assert Budget.parse("30m").describe() == "30m"
    with pytest.raises(MedftError, match="--budget 2 days"):
        Budget.parse("2 days")
    # each rung a complete schedule, about η times longer, the last one the full --num_train_epochs
    assert rung_epochs(9, 1, 3) == [1, 3, 9]
    assert rung_epochs(10, 2, 3) == [2, 3, 10]
    assert rung_epochs(2, 2, 3) == [2]
    # the shortest rung is the fewest epochs every strategy runs in with the flags the user fixed
    layout = BlockLayout(blocks=(("b0",), ("b1",)), head=("head",), new=("head",))
    assert SearchSpace.build(["ft", "lpft"], {}, layout, final_epochs=9, reduction_factor=3).rungs == (2, 3, 9)
    assert SearchSpace.build(["ft", "lpft"], {"lp_epochs": 3}, layout, 9, 3).rungs == (4, 9)


def record(number: int, scores: dict[int, float], augmentation: str, error: float = 0.0103) -> TrialRecord:
    return TrialRecord(number, "complete", {"strategy": "ft", "learning_rate": 1e-3, "augmentation": augmentation},
                       scores, sum(scores), 1.0, f"{number:03d}-ft", standard_error=error)  # fmt: skip


def test_each_strategys_first_trial_is_at_its_defaults_which_follow_a_fixed_learning_rate():
    layout = BlockLayout(blocks=(("b0",), ("b1",)), head=("head",), new=("head",))
    points = SearchSpace.build(["lpft", "l1sp"], {}, layout, 8, 3).starting_points()
    assert points[0] == {"strategy": "lpft", "learning_rate": 1e-3, "augmentation": "light",
                         "lpft.ft_learning_rate": 1e-3}  # fmt: skip
    assert points[1]["l1sp.sp_alpha"] == 1e-4
    # LP-FT's fine-tuning rate defaults to the run's rate: with --learning_rate fixed, it starts there
    fixed = SearchSpace.build(["lpft"], {"learning_rate": 3e-3}, layout, 8, 3).starting_points()
    assert fixed == [{"strategy": "lpft", "augmentation": "light", "lpft.ft_learning_rate": 3e-3}]
    above = SearchSpace.build(["lpft"], {"learning_rate": 0.1}, layout, 8, 3).starting_points()
    assert above[0]["lpft.ft_learning_rate"] == 1e-2, "brought inside the searched range"


def test_validation_ties_go_to_the_default_augmentation():
    # PneumoniaMNIST's search: 270 validation images, the top configurations within 0.01 of each other; given out
    # of order, as choose() must not rely on it
    trials = [record(10, {2: 0.95, 8: 0.9667}, "light"), record(15, {2: 0.95, 8: 0.9704}, "none"),
              record(17, {2: 0.94, 8: 0.9630}, "none"), record(5, {2: 0.99}, "light"),
              record(20, {2: 0.90, 8: 0.9590}, "light")]  # fmt: skip
    choice = choose(trials, final_epochs=8)
    assert choice.trial.number == 10 and choice.tied == [15, 10, 17]
    assert "3 of the 4 configurations trained 8 epochs score within one standard error (0.0103)" in choice.reason
    assert "the best with the default augmentation (light) is kept: trial 10 (0.9667)" in choice.reason
    by_score = choose(trials, final_epochs=8, tie_break="score")
    assert by_score.trial.number == 15 and by_score.reason.endswith("the best score is kept (--tie_break score).")


@pytest.mark.parametrize(
    ("runner_up", "error", "chosen", "tied", "reason"),
    [(0.9500, 0.0103, 15, [15], "highest validation balanced accuracy (0.9704) at 8 epochs among the 2"),
     # no confusion matrix, so no error known: only an equal score ties (to the last bit; the earlier trial first)
     (0.9704, None, 10, [10, 15], "2 of the 2 configurations trained 8 epochs score within one standard error"),
     (0.9704 - 1e-16, 0.0, 10, [15, 10], "2 of the 2"),
     (0.9667, None, 15, [15], "highest validation balanced accuracy")],
)  # fmt: skip
def test_only_scores_within_the_error_are_tied(runner_up, error, chosen, tied, reason):
    choice = choose([record(15, {8: 0.9704}, "none", error), record(10, {8: runner_up}, "light", error)], 8)
    assert choice.trial.number == chosen and choice.tied == tied and choice.reason.startswith(reason)


@pytest.mark.parametrize(
    ("augmentations", "ending"),
    [(("none", "rrc"), "none of them uses the default augmentation (light), so the best is kept."),
     (("light", "none"), "the best with the default augmentation (light) is kept, the best itself.")],
)  # fmt: skip
def test_ties_keep_the_best_when_it_has_the_default_augmentation_or_none_has(augmentations, ending):
    choice = choose([record(15, {8: 0.9704}, augmentations[0]), record(16, {8: 0.9667}, augmentations[1])], 8)
    assert choice.trial.number == 15 and choice.tied == [15, 16] and choice.reason.endswith(ending)


def test_tiny_search_writes_ranking_and_final_model(tiny_model, tiny_dataset, tmp_path):
    output_dir = tmp_path / "search"
    selection = search(tiny_model, tiny_dataset, output_dir)

    ranking = Ranking.load(output_dir)
    assert ranking == selection.ranking, "ranking.json reads back as the search's own record"
    # every strategy was tried, each trial's scores are its runs' validation scores, and no run saw the test split
    assert {t.configuration["strategy"] for t in ranking.trials} == {"ft", "lp"}
    for trial in ranking.trials:
        for epochs, score in trial.scores.items():
            result = RunResult.load(output_dir / "trials" / trial.folder / f"e{epochs}")
            assert result.num_train_epochs == epochs
            assert result.validation["balanced_accuracy"] == score
            assert result.test is None
        # the standard error is the one of the score at the trial's longest rung
        top = RunResult.load(output_dir / "trials" / trial.folder / f"e{trial.top[0]}")
        assert trial.standard_error == pytest.approx(
            balanced_accuracy_standard_error(top.validation["confusion_matrix"]), abs=1e-6
        )
    # the budget: trials' epochs and the final runs' add up to at most 8; the chosen trial's 2-epoch run, made with
    # the final run's flags on seed 0, is that run: tested, not trained again
    assert ranking.budget["final_from_search"] == 1
    retrained = ranking.budget["final_seeds"] - ranking.budget["final_from_search"]
    assert sum(t.epochs for t in ranking.trials) + 2 * retrained <= 8
    assert ranking.choice.trial.number in ranking.choice.tied
    # the final model: train.py's layout, the chosen configuration at the full epochs, tested once
    model = RunResult.load(selection.model_dir)
    chosen = ranking.choice.trial.configuration
    assert (model.strategy, model.learning_rate, model.num_train_epochs) == (
        chosen["strategy"],
        chosen["learning_rate"],
        2,
    )
    assert model.test is not None and (selection.model_dir / "model.safetensors").is_file()
    trial_run = output_dir / "trials" / ranking.choice.trial.folder / "e2"
    assert (selection.model_dir / model.trained_in).resolve() == trial_run.resolve()
    assert model.validation == RunResult.load(trial_run).validation
    assert ranking.final[0]["trained_in"] == model.trained_in
    assert ranking.final[0]["test"]["balanced_accuracy"] == model.test["balanced_accuracy"]
    assert "**Chosen**: trial" in (output_dir / "ranking.md").read_text()
    # its model card says how it was chosen
    assert model.selection["reason"] == ranking.choice.reason
    card = str(model_card(model, "someone/chosen"))
    assert "## How this configuration was chosen" in card and ranking.choice.reason in card


def test_a_dataset_without_a_test_split_gets_its_final_model_untested(tiny_model, tmp_path):
    dataset = write_hub_dataset(tmp_path / "data", {"train": 48, "validation": 12})
    args = select_lib.SelectArguments(budget="6ep", strategies=["ft"], seeds=1, reduction_factor=2)
    selection = select_lib.select(args, train_flags(tiny_model, dataset, tmp_path / "search"))
    assert selection.ranking.budget["final_from_search"] == 1
    model = RunResult.load(selection.model_dir)
    assert model.test is None and model.trained_in is not None
    assert model.validation == RunResult.load(selection.model_dir / model.trained_in).validation
    assert (selection.model_dir / "model.safetensors").is_file()


def test_rerun_after_interruption_repeats_no_finished_run(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    output_dir = tmp_path / "search"
    trained: list[str] = []
    real_run = train_lib.run

    def counting_run(model_args, data_args, configs, training_args):
        trained.append(training_args.output_dir)
        if len(trained) == 3 and interrupt:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the search
        return real_run(model_args, data_args, configs, training_args)

    monkeypatch.setattr(train_lib, "run", counting_run)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        search(tiny_model, tiny_dataset, output_dir, budget="10ep")
    finished = run_folders(output_dir)
    assert len(finished) == 2 and not (output_dir / "ranking.json").exists()
    cut = Path(trained[-1])

    interrupt = False
    trained.clear()
    search(tiny_model, tiny_dataset, output_dir, budget="10ep")
    # nothing finished was trained again, or even rewritten; the interrupted run was trained in its own folder
    assert not {Path(folder) for folder in trained} & set(finished)
    assert {folder: run_folders(output_dir)[folder] for folder in finished} == finished
    assert Path(trained[0]) == cut
    study = study_of(output_dir)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    assert retry[0].user_attrs["folder"] == failed[0].user_attrs["folder"]


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """One configuration that fails (here every LP run, as out of memory would) must not end an unattended search."""
    real_run = train_lib.run

    def run_unless_lp(model_args, data_args, configs, training_args):
        if model_args.strategy == "lp":
            raise RuntimeError("CUDA out of memory")
        return real_run(model_args, data_args, configs, training_args)

    monkeypatch.setattr(train_lib, "run", run_unless_lp)
    selection = search(tiny_model, tiny_dataset, tmp_path / "search", budget="8ep")
    failed = [t for t in selection.ranking.trials if t.configuration["strategy"] == "lp"]
    assert failed and all(t.note == "failed: RuntimeError: CUDA out of memory" for t in failed)
    assert any(t.configuration["strategy"] == "ft" and t.scores for t in selection.ranking.trials)
    assert selection.ranking.choice.trial.configuration["strategy"] == "ft"
    assert (tmp_path / "search" / "ranking.json").is_file()


def test_a_search_where_every_strategy_fails_ends_with_their_errors(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """Failing trials cost no budget, so a cause that fails them all (a full disk) would never end the search."""

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_lib, "run", full_disk)
    expected = r"^every strategy failed in the last 3 trials \(ft: trial \d: OSError: .*device; lp: trial \d: OSError"
    with pytest.raises(MedftError, match=expected):
        search(tiny_model, tiny_dataset, tmp_path / "search", budget="8ep")
    assert len(study_of(tmp_path / "search").trials) == 3
    assert not (tmp_path / "search" / "ranking.json").exists()


def test_the_error_when_every_strategy_fails_names_the_way_out(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(train_lib, "run", lambda *_: (_ for _ in ()).throw(MemoryError("out of memory")))
    with pytest.raises(MedftError, match=r"a search with other flags needs another --output_dir \(or --storage\)"):
        search(tiny_model, tiny_dataset, tmp_path / "search", budget="8ep")


def test_a_search_ended_by_its_budget_trains_nothing_more_run_again(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: False)  # every trial goes on to the next rung
    output_dir = tmp_path / "search"
    # 7 epochs: 2 for the final run, 5 for the search: ft at 1 and 2 epochs, lp at 1; lp's 2 epochs do not fit
    search(tiny_model, tiny_dataset, output_dir, budget="7ep")
    assert [t.user_attrs.get("stopped") for t in study_of(output_dir).trials] == [None, "budget"]
    finished = run_folders(output_dir)
    # The epoch left would pay for a new trial's first rung, but it could never reach the longest rung, so never be
    # chosen: the same search again trains nothing, here from the command line (a library call's search goes on there).
    flags = train_flags(tiny_model, tiny_dataset, output_dir)
    select_lib.main([*(f"--{key}={value}" for key, value in flags.items()), "--budget", "7ep",
                     "--strategies", "ft", "lp", "--seeds", "1", "--reduction_factor", "2"])  # fmt: skip
    assert run_folders(output_dir) == finished and len(study_of(output_dir).trials) == 2
    # a trial queued again (its worker died) still runs: here it finds its runs finished and reads them back
    requeue(study_of(output_dir), study_of(output_dir).trials[0])
    search(tiny_model, tiny_dataset, output_dir, budget="7ep")
    assert run_folders(output_dir) == finished and study_of(output_dir).trials[-1].state.name == "COMPLETE"
    search(tiny_model, tiny_dataset, output_dir, budget="8ep")  # a larger budget goes on
    assert len(study_of(output_dir).trials) == 4


def test_a_dead_workers_trial_queued_at_the_end_still_runs(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """A worker killed mid-trial is found by its stale heartbeat only when another worker waits for it at the end:
    the trial queued again then must run before the choice, not be left waiting."""
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: False)
    monkeypatch.setattr(storage_lib, "HEARTBEAT_S", 1)
    monkeypatch.setattr(storage_lib, "GRACE_S", 1)
    monkeypatch.setattr(storage_lib, "POLL_S", 0.1)
    output_dir = tmp_path / "search"
    search(tiny_model, tiny_dataset, output_dir, budget="7ep")  # ended by its budget: no new trial would start
    finished = run_folders(output_dir)
    storage = storage_lib.open_storage(f"sqlite:///{output_dir / 'search.db'}")
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    study.enqueue_trial(study.trials[0].params, user_attrs={RETRY_OF: 0})
    dead = study.ask()  # a worker took it, beat once, and died before drawing its parameters
    storage.record_heartbeat(dead._trial_id)
    time.sleep(1.5)
    search(tiny_model, tiny_dataset, output_dir, budget="7ep")
    trials = study_of(output_dir).trials
    assert trials[dead.number].state.name == "FAIL"
    assert trials[-1].user_attrs[RETRY_OF] == 0 and trials[-1].state.name == "COMPLETE"
    assert trials[-1].params == trials[0].params, "queued again with the parameters it was queued with"
    assert not [t for t in trials if t.state.name in ("WAITING", "RUNNING")]
    assert run_folders(output_dir) == finished, "it continued in trial 0's folder, whose runs had finished"


def test_final_runs_of_an_earlier_choice_count_against_a_larger_budget(tiny_model, tiny_dataset, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    """A larger --budget can change the choice; the final runs trained for the first choice stay spent."""
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: False)
    output_dir = tmp_path / "search"
    first = search(tiny_model, tiny_dataset, output_dir, budget="12ep", seeds=2).ranking
    assert (first.budget["final_seeds"], first.budget["final_from_search"]) == (2, 1), "seed 1 trained: 2 epochs"
    real_choose = select_lib.ranking_lib.choose

    def another(trials, final_epochs, tie_break):
        others = [t for t in trials if t.number != first.choice.trial.number and t.top[0] == final_epochs]
        return replace(real_choose(trials, final_epochs, tie_break), trial=others[0])

    monkeypatch.setattr(select_lib.ranking_lib, "choose", another)
    second = search(tiny_model, tiny_dataset, output_dir, budget="16ep", seeds=2).ranking
    assert second.choice.trial.number != first.choice.trial.number
    assert second.budget["earlier_finals_used"] == "2ep"
    assert "(2ep on those of an earlier choice)" in (output_dir / "ranking.md").read_text()
    retrained = second.budget["final_seeds"] - second.budget["final_from_search"]
    assert sum(t.epochs for t in second.trials) + 2 * retrained + 2 <= 16


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (("push_to_hub", True), "--push_to_hub True: not in a search: every trial and final run would push"),
        (("max_steps", 5), "--max_steps 5: not in a search: every rung is a complete schedule of whole epochs"),
        (("num_train_epochs", 2.5), "--num_train_epochs 2.5: a search's rungs and final runs are whole epochs"),
    ],
)
def test_flags_a_search_cannot_pass_to_every_run_are_refused(flag, message, tiny_model, tiny_dataset, tmp_path):
    args = select_lib.SelectArguments(budget="8ep", strategies=["ft", "lp"], seeds=1, reduction_factor=2)
    flags = {**train_flags(tiny_model, tiny_dataset, tmp_path / "search"), flag[0]: flag[1]}
    with pytest.raises(MedftError, match=re.escape(message)):
        select_lib.select(args, flags)
    assert not (tmp_path / "search").exists()


def test_a_time_budget_is_timed_once_then_the_search_measures_it(tmp_path, monkeypatch):
    """A rerun reads the seconds per epoch its trials measured: timing again would spend time the budget does not
    count, and on a busier machine change the plan of a search under way."""
    url = f"sqlite:///{tmp_path / 'search.db'}"
    assert storage_lib.measured_seconds_per_epoch(url) is None and not (tmp_path / "search.db").exists()
    study = optuna.create_study(study_name=STUDY_NAME, storage=url)
    assert storage_lib.measured_seconds_per_epoch(url) is None, "a search that has measured nothing"
    trial = study.ask()
    trial.set_user_attr(storage_lib.EPOCHS, 4)
    trial.set_user_attr(storage_lib.SECONDS, 10.0)
    study.tell(trial, 0.5)
    monkeypatch.setattr(select_lib, "run_once", lambda *_: pytest.fail("timed again"))
    space = SimpleNamespace(rungs=(1, 2))
    assert select_lib._seconds_per_epoch(Budget.parse("1h"), space, {}, url) == 2.5


@pytest.mark.parametrize(
    ("budget", "ended_then"), [("7ep", True), ("6ep", True), ("8ep", False), ("2h", False)]
)  # fmt: skip
def test_a_search_ended_at_a_budget_stays_ended_up_to_that_budget_in_its_unit(budget, ended_then):
    study = SimpleNamespace(user_attrs={ENDED_AT: {"amount": 7.0, "unit": "epochs"}})
    assert ended(study, Budget.parse(budget)) == ended_then
    assert not ended(SimpleNamespace(user_attrs={}), Budget.parse(budget))


def test_two_workers_share_one_database_and_run_no_trial_twice(tiny_model, tiny_dataset, tmp_path):
    output_dir = tmp_path / "search"
    flags = train_flags(tiny_model, tiny_dataset, output_dir)
    argv = [sys.executable, "-m", "medft_hf.select", "--budget", "14ep", "--strategies", "ft", "lp", "--seeds", "1",
            "--reduction_factor", "2"]  # fmt: skip
    for name, value in flags.items():
        argv += [f"--{name}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr

    study = study_of(output_dir)
    trials = [t for t in study.trials if t.user_attrs.get("folder")]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took part
    # every trial its own configuration and folder, and every run folder trained by exactly one trial
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)
    assert len({t.user_attrs["folder"] for t in trials}) == len(trials)
    folders = run_folders(output_dir)
    assert sum(t.user_attrs["epochs"] for t in trials) == sum(int(f.name[1:]) for f in folders)
    assert len(folders) == sum(len(t.intermediate_values) for t in trials)
    assert sum(t.user_attrs["epochs"] for t in trials) <= 14 - 2
    assert (output_dir / "model" / "results.json").is_file()


def test_a_worker_that_loses_the_race_to_create_the_database_opens_it_next_time(tmp_path, monkeypatch):
    """Two workers starting together on a new database both create its tables; the loser's error (seen in the test
    above: UNIQUE constraint failed: alembic_version.version_num) is passed over, and a database that never opens
    ends in one clear message."""
    import sqlalchemy.exc

    from medft_hf.selection import storage as storage_lib

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # the other worker created the tables first
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(storage_lib.time, "sleep", lambda seconds: None)
    assert isinstance(storage_lib.open_storage(f"sqlite:///{tmp_path / 'search.db'}"), real)
    assert len(calls) == 2
    monkeypatch.setattr(optuna.storages, "RDBStorage", real)
    with pytest.raises(MedftError, match=r"--storage sqlite:////nowhere/at/all\.db: the database could not be opened"):
        storage_lib.open_storage("sqlite:////nowhere/at/all.db")


def test_too_small_budget_is_refused_with_the_minimum(tiny_model, tiny_dataset, tmp_path, capsys):
    output_dir = tmp_path / "search"
    flags = train_flags(tiny_model, tiny_dataset, output_dir)
    argv = ["--budget", "3ep", "--strategies", "ft", "lp", "--reduction_factor", "2"]
    for name, value in flags.items():
        argv += [f"--{name}", str(value)]
    with pytest.raises(SystemExit) as exit_info:
        select_lib.main(argv)
    assert exit_info.value.code == 2
    # two strategies × one epoch, then the chosen one for 2 epochs
    assert "needs at least --budget 4ep" in capsys.readouterr().err
    assert not output_dir.exists()


def test_too_small_time_budget_is_refused_after_a_timing_probe(tiny_model, tiny_dataset, tmp_path):
    output_dir = tmp_path / "search"
    with pytest.raises(MedftError, match=r"s per epoch \(measured\)\. It needs at least --budget \d+m"):
        search(tiny_model, tiny_dataset, output_dir, budget="1s")
    assert not output_dir.exists()


def test_a_search_from_scratch_with_one_seed_proposes_the_same_configurations(tmp_path):
    """The sampler is seeded (--search_seed): past the starting points, TPE's proposals repeat, and differ with
    another seed."""
    from medft_hf.modeling import BlockLayout
    from medft_hf.selection.space import SearchSpace
    from medft_hf.selection.storage import open_storage, open_study

    layout = BlockLayout(blocks=(("b0",), ("b1",), ("b2",)), head=("head",), new=("head",))
    space = SearchSpace.build(["ft", "lpft", "l2sp"], {}, layout, final_epochs=4, reduction_factor=2)

    def proposals(name: str, seed: int) -> list[dict]:
        storage = open_storage(f"sqlite:///{tmp_path / name}.db")
        study = open_study(storage, {"case": name}, space, 2, seed)
        configurations = []
        for _ in range(len(space.strategies) + 4):
            trial = study.ask()
            configurations.append(space.suggest(trial))
            study.tell(trial, 0.5 + 0.01 * len(configurations))
        return configurations[len(space.strategies) :]

    first = proposals("first", seed=0)
    assert proposals("second", seed=0) == first
    assert proposals("third", seed=1) != first
