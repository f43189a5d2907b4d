"""The study: grid validation, resumable runs, and the report's aggregation on synthetic results."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_train import ROOT

from medft_hf.checkpoints import STATE_FILE
from medft_hf.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, paper_claims
from medft_hf.errors import MedftError
from medft_hf.report import collect, select_on_validation, summary, write_report
from medft_hf.report import main as report_main
from medft_hf.report_stats import case_differences, dataset_level_tests, holm
from medft_hf.results import RunResult
from medft_hf.study import Grid, parse_filters


def test_shipped_grids_are_valid_and_cpu_has_the_promised_shape():
    cpu = Grid.from_yaml("cpu")
    assert cpu.strategies == ["ft", "lp", "lpft", "gu_lf", "gu_fl", "l1sp", "l2sp", "auto_rgn"]
    assert len(cpu.datasets) >= 3
    assert len(cpu.seeds) == 3
    paper = Grid.from_yaml("paper")
    assert set(paper.backbones) >= {"resnet50", "densenet121", "vgg19"}
    assert len(paper.cells()) == 8 * len(paper.backbones) * len(paper.datasets) * 3 * 3


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "hub_configs" / "benchmarks").glob("*.yaml")))
def test_every_cell_of_a_shipped_grid_parses_as_train_py_arguments(name, tmp_path):
    """A flag transformers renamed (v5 dropped `warmup_ratio`) fails every cell of a grid, each only when it runs."""
    from medft_hf.train import parse_dict

    grid = Grid.from_yaml(name)
    points = {replace(cell, seed=grid.seeds[0]) for cell in grid.cells()}
    for cell in sorted(points, key=lambda c: str(c.path)):
        # a GPU grid's bf16 needs a GPU to be accepted; every other flag is checked as the cell will pass it
        flags = {**grid.flags(cell, tmp_path), "bf16": False, "use_cpu": True}
        parse_dict(flags)


def test_a_grid_with_bad_names_fails_naming_every_one(tmp_path):
    spec = {"name": "bad", "strategies": ["ft", "lqft"], "backbones": ["resnet50", "resnet5O"],
            "datasets": ["nowhere"], "seeds": [0]}  # fmt: skip
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MedftError) as error:
        Grid.from_yaml(path)
    for name in ("'lqft'", "'resnet5O'", "'nowhere'"):
        assert name in str(error.value)
    with pytest.raises(MedftError, match=r"grid cpu-v3: no such file, nor a shipped grid .*cpu-v2, .*paper"):
        Grid.from_yaml("cpu-v3")


def test_a_grid_whose_strategies_would_train_identically_is_refused(tiny_model, tmp_path):
    spec = {"name": "short", "strategies": ["ft", "lp", "gu_lf", "gu_fl", "lpft"],
            "backbones": [{"name": "tiny", "model": str(tiny_model)}], "datasets": ["breastmnist-local"],
            "seeds": [0], "training": {"num_train_epochs": 2}}  # fmt: skip
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MedftError, match="on tiny at 2 epochs, gu_lf and gu_fl train identically"):
        Grid.from_yaml(path)
    spec["training"]["num_train_epochs"] = 1
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MedftError) as error:
        Grid.from_yaml(path)
    assert "lp and gu_lf and gu_fl train identically" in str(error.value)
    assert "lpft on tiny: --strategy lpft needs at least 2 epochs" in str(error.value)
    spec["training"]["num_train_epochs"] = 3.5
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MedftError, match="lpft on tiny: --strategy lpft starts a new optimisation at an epoch bound"):
        Grid.from_yaml(path)
    spec["training"]["num_train_epochs"] = 3
    spec["overrides"] = {"lpft": {"ft_warmup_ratio": None}}  # null in YAML: the flag's default, as in the cells
    path.write_text(yaml.safe_dump(spec))
    assert len(Grid.from_yaml(path).cells()) == 5
    # a dataset entry's own flags are checked as its cells will get them
    spec["datasets"].append({"name": "short-data", "path": "x", "train_flags": {"num_train_epochs": 2}})
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MedftError, match="on tiny with short-data at 2 epochs, gu_lf and gu_fl train identically"):
        Grid.from_yaml(path)


def test_filters_and_sweeps_make_the_expected_cells():
    grid = Grid.from_yaml("cpu")
    cells = grid.cells(parse_filters("strategy=lpft|ft,dataset=breastmnist-local,seed=0"))
    assert {(c.strategy, dict(c.sweep)["learning_rate"]) for c in cells} == {
        ("ft", 0.001), ("ft", 0.003), ("lpft", 0.001), ("lpft", 0.003)
    }  # fmt: skip
    argv = grid.argv(cells[0], Path("out"))
    assert argv[argv.index("--use_cpu") + 1] == "true"
    assert argv[argv.index("--learning_rate") + 1] in ("0.001", "0.003")


def test_filters_refuse_unknown_keys_and_values_and_compare_numbers_as_numbers():
    grid = Grid.from_yaml("cpu")
    assert {dict(c.sweep)["learning_rate"] for c in grid.cells(parse_filters("learning_rate=1e-3"))} == {0.001}
    with pytest.raises(MedftError, match=r"unknown key 'stratgy' \(keys: .*strategy"):
        grid.cells(parse_filters("stratgy=ft"))
    with pytest.raises(MedftError, match=r"strategy=lqft matches no cell \(strategy values: .*lpft"):
        grid.cells(parse_filters("strategy=lqft|ft"))
    with pytest.raises(MedftError, match=r"learning_rate=0.01 matches no cell"):
        grid.cells(parse_filters("learning_rate=0.01"))


def test_cells_reach_train_py_typed_not_as_text(tmp_path):
    from medft_hf.train import parse_dict

    path = tmp_path / "typed.yaml"
    path.write_text("name: typed\nstrategies: [l2sp]\nbackbones: [efficientnet-lite0-local]\n"
                    "datasets: [breastmnist-local]\nseeds: [0]\ntraining: {learning_rate: 1e-3, use_cpu: true}\n"
                    "sweep: {sp_alpha: [1e-2, 0.1]}\n")  # fmt: skip
    grid = Grid.from_yaml(path)
    cell = grid.cells()[0]
    flags = grid.flags(cell, tmp_path / "out")
    assert flags["learning_rate"] == 0.001 and flags["sp_alpha"] == 0.01, "1e-3 is a number, as people mean it"
    _, _, configs, training_args = parse_dict(flags)
    assert training_args.learning_rate == 0.001 and training_args.use_cpu is True
    assert next(c for c in configs if hasattr(c, "sp_alpha")).sp_alpha == 0.01
    with pytest.raises(MedftError, match="sp_alfa"):
        parse_dict({**flags, "sp_alfa": 1})


def test_shards_split_the_cells_without_overlap(tmp_path, capsys):
    from medft_hf.study import main, parse_shard

    def listed(*flags: str) -> list[str]:
        main(["cpu", "--output_dir", str(tmp_path), "--status", *flags])
        return [line.split()[1] for line in capsys.readouterr().out.strip().splitlines()[1:-1]]  # heading, cells, sum

    everything = listed()
    shards = [listed("--shard", f"{i}/3") for i in range(3)]
    assert sorted(path for shard in shards for path in shard) == sorted(everything)
    assert len(everything) == 144 and all(46 <= len(shard) <= 50 for shard in shards)
    for bad in ("3/3", "x/2", "1"):
        with pytest.raises(MedftError, match="expected i/n"):
            parse_shard(bad)


def test_a_search_halves_the_sweep_on_seed_0_then_runs_the_other_seeds_at_the_setting_chosen_there(tmp_path, capsys):
    from medft_hf.study import Cell, main

    grid, root = Grid.from_yaml("cpu-v2"), tmp_path / "runs"
    filters = parse_filters("dataset=breastmnist-local,backbone=efficientnet-lite0-local,strategy=ft|l2sp")

    def stage(k: int) -> tuple[set[tuple[str, str, int, int | None]], int]:
        cells, waiting = grid.stage_cells(k, root, filters)
        return {(c.strategy, c.path.parts[-2], c.seed, c.epochs) for c in cells}, waiting

    def finish(cells: set, score) -> None:
        for strategy, point, seed, epochs in cells:
            cell = next(
                c for c in grid.cells(filters) if (c.strategy, c.seed, c.path.parts[-2]) == (strategy, seed, point)
            )
            folder = root / Cell(cell.dataset, cell.backbone, strategy, seed, cell.sweep, epochs).path
            write_result(root, "d", strategy, seed, 1e-3, score(point, epochs), 0.5, folder=folder)

    rung, waiting = stage(0)
    assert waiting == 0 and len(rung) == 4 + 8, "every point of ft (4 rates) and l2sp (4 rates x 2 alphas), seed 0"
    assert {epochs for *_, epochs in rung} == {3} and {seed for _, _, seed, _ in rung} == {0}
    rung_cell = grid.stage_cells(0, root, filters)[0][0]
    flags = grid.flags(rung_cell, tmp_path)
    assert flags["num_train_epochs"] == 3 and flags["skip_test"] is True, "a rung never sees the test split"
    assert stage(1) == (set(), 2), "the full schedule waits for the rung"
    # On the rung, validation prefers smaller rates (ties broken by the setting's name); at 8 epochs, larger ones.
    finish(rung, lambda point, epochs: 0.8 - float(point.split("=")[1].split("-")[0]))
    full, _ = stage(1)
    assert {(s, p) for s, p, *_ in full} == {
        ("ft", "learning_rate=0.0003"), ("ft", "learning_rate=0.001"),  # the best third of 4, rounded up: 2
        ("l2sp", "learning_rate=0.0003-sp_alpha=0.01"), ("l2sp", "learning_rate=0.0003-sp_alpha=0.1"),
        ("l2sp", "learning_rate=0.001-sp_alpha=0.01"),  # of 8: 3
    }  # fmt: skip
    assert {(seed, epochs) for *_, seed, epochs in full} == {(0, None)}
    finish(full, lambda point, epochs: 0.5 + float(point.split("=")[1].split("-")[0]))
    seeds, _ = stage(2)
    assert seeds == {("ft", "learning_rate=0.001", 1, None), ("ft", "learning_rate=0.001", 2, None),
                     ("l2sp", "learning_rate=0.001-sp_alpha=0.01", 1, None),
                     ("l2sp", "learning_rate=0.001-sp_alpha=0.01", 2, None)}  # fmt: skip
    finish(seeds, lambda point, epochs: 0.6)
    # the report leaves the rungs out and chooses what the search chose
    runs, _ = collect(root)
    assert len(runs) == len(full) + len(seeds)
    chosen = select_on_validation(runs, "balanced_accuracy").groupby("strategy")["setting"].agg(set).to_dict()
    assert chosen == {"ft": {"learning_rate=0.001"}, "l2sp": {"learning_rate=0.001-sp_alpha=0.01"}}
    report = write_report(root, tmp_path / "report").read_text()
    assert "- Search: 12 more runs of 2 epochs ranked each strategy's settings on validation" in report  # synthetic
    main(["cpu-v2", "--output_dir", str(root), "--status", "--filter", "dataset=breastmnist-local,backbone="
          "efficientnet-lite0-local,strategy=ft|l2sp"])  # fmt: skip
    assert capsys.readouterr().out.splitlines()[-1].startswith("21 done, 0 failed, 0 running, 0 pending of 21 cells")


def test_a_search_is_refused_with_rungs_as_long_as_the_schedule_or_seeds_outside_the_grid(tmp_path):
    spec = yaml.safe_load(Path(ROOT / "hub_configs/benchmarks/cpu-v2.yaml").read_text())
    spec["search"] = {"seeds": [5], "rungs": [8]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MedftError) as error:
        Grid.from_yaml(path)
    assert "search seed 5 is not among the grid's seeds" in str(error.value)
    assert "search rungs [8] must be shorter than ft's 8 epochs" in str(error.value)


def search_grid(tmp_path: Path, search: dict) -> Grid:
    """cpu-v2 with another `search:` section."""
    spec = yaml.safe_load(Path(ROOT / "hub_configs/benchmarks/cpu-v2.yaml").read_text())
    path = tmp_path / "searching.yaml"
    path.write_text(yaml.safe_dump({**spec, "search": search}))
    return Grid.from_yaml(path)


@pytest.mark.parametrize("search", [{"rungs": [3, 3]}, {"seeds": [0, 0], "rungs": [3]}, {"rungs": [0]}])
def test_a_search_is_refused_with_a_rung_or_seed_twice_or_a_rung_of_no_epoch(tmp_path, search):
    """A repeated rung would train the same cells twice and halve the survivors twice for nothing."""
    with pytest.raises(MedftError, match="seeds and rungs each listed once"):
        search_grid(tmp_path, search)


def test_a_search_is_refused_with_a_rung_too_short_for_a_strategy(tmp_path):
    with pytest.raises(MedftError, match=r"lpft on efficientnet-lite0-local at the search's 1-epoch rung: .*2 epochs"):
        search_grid(tmp_path, {"seeds": [0], "rungs": [1, 3]})


def test_failed_points_never_go_on_and_a_rung_with_one_point_left_is_skipped(tmp_path):
    from medft_hf.study import FAILED_FILE

    grid, root = search_grid(tmp_path, {"seeds": [0], "rungs": [2, 3]}), tmp_path / "runs"
    filters = parse_filters("dataset=breastmnist-local,backbone=efficientnet-lite0-local,strategy=ft")
    rung = grid.stage_cells(0, root, filters)[0]
    assert [c.epochs for c in rung] == [2] * 4, "4 learning rates on the 2-epoch rung"
    for cell in rung:  # the best-scoring rate succeeds, the other three fail
        if cell.sweep == (("learning_rate", 0.001),):
            write_result(root, "d", "ft", 0, 1e-3, 0.9, 0.5, folder=root / cell.path)
        else:
            (root / cell.path).mkdir(parents=True)
            (root / cell.path / FAILED_FILE).write_text("{}")
    assert grid.stage_cells(1, root, filters) == ([], 0), "one point left: nothing to rank on the 3-epoch rung"
    full = grid.stage_cells(2, root, filters)[0]
    assert [(c.sweep, c.seed, c.epochs) for c in full] == [((("learning_rate", 0.001),), 0, None)]
    others = grid.stage_cells(3, root, filters)[0]
    assert [(c.sweep, c.seed) for c in others] == [(full[0].sweep, 1), (full[0].sweep, 2)], "nothing left to wait for"
    planned = [[(c.seed, c.epochs) for c in stage] for stage in grid.planned_cells(filters)]
    assert planned == [[(0, 2)] * 4, [(0, 3)] * 2, [(0, None)], [(1, None), (2, None)]], "before anything ran: 4, 2, 1"


def test_a_dry_run_shard_lists_the_cells_that_shard_runs_stage_by_stage(tmp_path, capsys):
    from medft_hf.study import main

    selection = "dataset=breastmnist-local,backbone=efficientnet-lite0-local,strategy=ft|l2sp"
    main(["cpu-v2", "--output_dir", str(tmp_path), "--dry-run", "--shard", "1/2", "--filter", selection])
    listed = [line for line in capsys.readouterr().out.splitlines() if re.fullmatch(r"\S+/seed\d", line)]
    rung = Grid.from_yaml("cpu-v2").stage_cells(0, tmp_path, parse_filters(selection))[0]
    assert listed[: len(rung[1::2])] == [str(cell.path) for cell in rung[1::2]], "the first stage as a run shards it"
    assert len(listed) == 6 + 2 + 2, "half of: 12 rung cells, 5 full runs on seed 0 (2 + 3), 4 on the other seeds"

    main(["paper", "--dry-run", "--shard", "7/8", "--filter", "strategy=ft,seed=0,backbone=vgg19,dataset=ham10000-hf"])
    assert "0 cells" in capsys.readouterr().out, "a shard left without cells costs nothing, and says so"


def test_a_grid_whose_output_holds_an_unreadable_results_json_ends_with_one_message(tmp_path, capsys):
    from medft_hf.study import main

    selection = "dataset=breastmnist-local,backbone=efficientnet-lite0-local,strategy=ft"
    write_result(tmp_path, "x", "ft", 0, 1e-3, 0.5, 0.6, folder=tmp_path / "rungs/e3/breastmnist-local/"
                 "efficientnet-lite0-local/ft/learning_rate=0.0003/seed0")  # fmt: skip
    (next(tmp_path.rglob("results.json"))).write_text('{"strategy": "ft"}')
    with pytest.raises(SystemExit) as exited:
        main(["cpu-v2", "--output_dir", str(tmp_path), "--status", "--filter", selection])
    assert exited.value.code == 2 and capsys.readouterr().err.startswith("error: ")


def test_a_cell_held_by_a_live_worker_is_not_run_twice_and_a_dead_workers_lock_is_taken_over(tmp_path):
    import socket

    from medft_hf.study import LOCK_FILE, Cell, cell_lock, cell_status, run_cell

    grid = Grid.from_yaml("cpu")
    cell = Cell("breastmnist-local", "efficientnet-lite0-local", "ft", 0, (("learning_rate", 0.001),))
    folder = tmp_path / cell.path
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))  # alive
    assert run_cell(grid, cell, tmp_path) == "running elsewhere"
    assert cell_status(tmp_path, cell) == "running"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with cell_lock(folder) as held:
        assert held, "the lock of a process that died is taken over"
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
        with cell_lock(folder) as second:
            assert not second, "a second worker on the same cell backs off"
    assert not (folder / LOCK_FILE).exists()
    assert cell_status(tmp_path, cell) == "pending"
    (folder / LOCK_FILE).touch()  # created, then its worker died before writing who it is
    with cell_lock(folder) as held:
        assert not held, "an empty lock may be in the middle of being written"
    os.utime(folder / LOCK_FILE, (time.time() - 120, time.time() - 120))
    with cell_lock(folder) as held:
        assert held, "an empty lock a minute old was left by a dead worker: taken over"


def test_status_lists_each_cells_state(tmp_path, capsys):
    from medft_hf.study import main

    write_result(tmp_path, "breastmnist-local", "ft", 0, 1e-3, 0.5, 0.6)
    main(["cpu", "--output_dir", str(tmp_path), "--status", "--filter", "dataset=breastmnist-local,strategy=ft"])
    output = capsys.readouterr().out
    assert output.strip().splitlines()[-1] == "0 done, 0 failed, 0 running, 6 pending of 6 cells"


# ---- a real grid, killed and restarted -------------------------------------------------------------------------
def test_a_killed_grid_restarts_without_redoing_finished_cells(tiny_model, tiny_dataset, tmp_path):
    spec = {
        "name": "tiny",
        "strategies": ["lp", "lpft"],
        "backbones": [{"name": "tiny-net", "model": str(tiny_model)}],
        "datasets": [{"name": "tiny-data", "path": str(tiny_dataset)}],
        "seeds": [0],
        "training": {"image_size": 32, "num_train_epochs": 30, "per_device_train_batch_size": 16, "use_cpu": True},
        "overrides": {"lp": {"num_train_epochs": 1}},
    }
    grid_file, out = tmp_path / "tiny.yaml", tmp_path / "out"
    grid_file.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "scripts/benchmark.py", str(grid_file), "--output_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first_cell = out / "tiny-data" / "tiny-net" / "lp" / "default" / "seed0"
    second_cell = out / "tiny-data" / "tiny-net" / "lpft" / "default" / "seed0"
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if list(second_cell.glob("checkpoint-*/medft_state.json")):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the grid ended before it could be killed inside its second cell")
    finally:
        process.kill()
        process.wait()
    finished = (first_cell / "results.json").stat().st_mtime_ns
    assert not (second_cell / "results.json").exists()

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (first_cell / "results.json").stat().st_mtime_ns == finished, "the finished cell was not redone"
    assert f"Resuming {second_cell} from checkpoint-" in rerun.stderr
    assert (second_cell / "results.json").exists()
    assert not list(second_cell.glob("checkpoint-*")), "a finished cell's checkpoints are cleaned up"


def test_a_results_only_grid_keeps_results_and_figures_not_weights_or_checkpoints(
    tiny_model, tiny_dataset, tmp_path, caplog
):
    from medft_hf.study import main

    spec = {"name": "lean", "strategies": ["ft"], "backbones": [{"name": "tiny-net", "model": str(tiny_model)}],
            "datasets": [{"name": "tiny-data", "path": str(tiny_dataset)}], "seeds": [0],
            "training": {"image_size": 32, "num_train_epochs": 2, "use_cpu": True, "save_model": False,
                         "min_validation_size": 100, "val_fraction": 0.25, "max_eval_samples": 6}}  # fmt: skip
    grid_file, out = tmp_path / "lean.yaml", tmp_path / "out"
    grid_file.write_text(yaml.safe_dump(spec))
    with caplog.at_level("INFO", logger="medft_hf"), pytest.raises(SystemExit) as exit_info:
        main([str(grid_file), "--output_dir", str(out)])
    assert exit_info.value.code == 0
    cell = out / "tiny-data/tiny-net/ft/default/seed0"
    epochs = [record.getMessage() for record in caplog.records if " epoch " in record.getMessage()]
    assert [line.split(": ")[0] for line in epochs] == [f"{cell} epoch 1/2", f"{cell} epoch 2/2"], "one per epoch"
    assert re.search(r"train loss [\d.]+, validation balanced_accuracy [\d.]+ \(best [\d.]+\)", epochs[1])
    assert sorted(path.name for path in cell.iterdir()) == [
        "confusion_matrix.png", "reliability_diagram.png", "results.json", "training_curves.png"
    ]  # fmt: skip
    result = RunResult.load(cell)
    # the fixture's 12-image validation split is under 100: carved from train (25% of 48), then capped at 6
    assert result.validation_source == "train"
    assert result.num_examples == {"train": 36, "validation": 6, "test": 12}


def test_paper_carves_the_tiny_xray_validation_split_and_its_dry_run_states_cost_and_disk(capsys):
    from medft_hf.cost import split_sizes
    from medft_hf.data import VALIDATION_NAMES
    from medft_hf.study import main

    paper = Grid.from_yaml("paper")
    cell = paper.cells(parse_filters("dataset=chest-xray-pneumonia-hf,strategy=ft,seed=0"))[0]
    flags, xray = paper.flags(cell, Path("out")), paper.entry("datasets", "chest-xray-pneumonia-hf")
    assert "validation" in VALIDATION_NAMES and xray["num_rows"]["validation"] < flags["min_validation_size"]
    assert split_sizes(xray["num_rows"], flags) == (4694, 522, 624), "10% of train carved, 16 images unused"
    pcam = paper.entry("datasets", "patch-camelyon-hf")["num_rows"]
    assert split_sizes(pcam, {**flags, "max_train_samples": 20000}) == (20000, 4096, 32768), "test stays whole"
    assert split_sizes(pcam, {**flags, "skip_test": True})[2] == 0, "a search rung evaluates no test split"

    main(["paper", "--dry-run"])
    output = capsys.readouterr().out
    assert output.splitlines()[0] == f"paper: {paper.description}; for: one GPU"
    assert "1080 cells" in output and "images/s measured" in output and "assumed" not in output
    hours = {line.split()[0]: float(line.split()[4]) for line in output.splitlines() if line.startswith(("res", "vgg"))}
    # vgg19 at 749 / 297 images/s (measured), 72 cells per dataset; (train, validation, test) as load_splits makes them
    sizes = [(4694, 522, 624), (4374, 486, 857), (20000, 4096, 32768), (9580, 2490, 1290), (8530, 1070, 1070)]
    expected = 72 * sum(30 * t / 749 + (31 * v + e) / 297 for t, v, e in sizes) / 3600
    assert hours["vgg19"] == pytest.approx(expected, abs=0.05)
    assert "0.0 GB of model weights kept" in output and "all kept: 255.2 GB" in output


def test_a_grid_with_a_bad_throughput_is_refused(tmp_path):
    throughput = {"measured": "yes", "images_per_second": {"resnet50": {"train": 0}}}
    spec = {"name": "t", "strategies": ["ft"], "backbones": ["resnet50", "vgg19"], "datasets": ["breastmnist-local"],
            "seeds": [0], "throughput": throughput}  # fmt: skip
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MedftError) as error:
        Grid.from_yaml(path)
    for problem in ("`measured` (true/false) and `source`", "no images_per_second for backbone 'vgg19'",
                    "images_per_second of 'resnet50' must be {train: number > 0, eval: number > 0}"):  # fmt: skip
        assert problem in str(error.value)


def test_a_grid_on_local_ray_with_two_workers_runs_each_cell_exactly_once(tiny_model, tiny_dataset, tmp_path, capsys):
    ray = pytest.importorskip("ray", reason='Ray is the optional cluster extra: pip install -e ".[cluster]"')
    from medft_hf.cluster import run_on_ray
    from medft_hf.study import main, run_cell_in_worker

    spec = {"name": "spread", "strategies": ["lp"], "backbones": [{"name": "tiny-net", "model": str(tiny_model)}],
            "datasets": [{"name": "tiny-data", "path": str(tiny_dataset)}], "seeds": [0, 1],
            "training": {"image_size": 32, "num_train_epochs": 1, "use_cpu": True, "save_model": False},
            "sweep": {"learning_rate": [1e-3, 3e-3]}}  # fmt: skip
    grid_file, out = tmp_path / "spread.yaml", tmp_path / "out"
    grid_file.write_text(yaml.safe_dump(spec))
    grid = Grid.from_yaml(grid_file)
    cells = grid.cells()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=100 * 2**20)
    try:
        # Every cell twice, side by side, as two drivers sharing one output folder would submit it: the two
        # workers start the same cell at once, and the cell lock must let only one of them train it.
        twice = [cell for cell in cells for _ in range(2)]
        finished = list(run_on_ray(twice, functools.partial(run_cell_in_worker, grid, out), cpus_per_task=1))
        outcomes = {cell: sorted(outcome for done, outcome in finished if done == cell) for cell in cells}
        for cell, pair in outcomes.items():
            assert pair[0] == "done" and pair[1] in ("running elsewhere", "skipped"), (cell.path, pair)
            assert (out / cell.path / "results.json").is_file()
        assert len(list(out.rglob("results.json"))) == len(cells) == 4

        with pytest.raises(SystemExit) as exit_info:  # the command line, on the Ray instance already running
            main([str(grid_file), "--output_dir", str(out), "--ray"])
        assert exit_info.value.code == 0
        assert "spread: {'skipped': 4} of 4 cells" in capsys.readouterr().out
    finally:
        ray.shutdown()


# ---- the report on synthetic results ---------------------------------------------------------------------------
def write_result(root: Path, dataset: str, strategy: str, seed: int, lr: float, validation: float, test: float,
                 folder: Path | None = None, config: dict | None = None):  # fmt: skip
    folder = folder or root / dataset / strategy / f"lr{lr}" / f"seed{seed}"
    folder.mkdir(parents=True)
    metrics = lambda value: {"accuracy": value, "balanced_accuracy": value, "macro_f1": value, "auroc": value}  # noqa: E731
    history = [{"epoch": e, "train_loss": 1.0 / e, "validation": metrics(validation)} for e in (1, 2)]
    state = {"history": [{"blocks": [0.2, 0.5, 1.0], "head": 0.7}] * 2} if strategy == "auto_rgn" else {}
    results = {"dataset": f"data/{dataset}", "model": "timm/net.in1k", "class_names": ["a", "b"],
               "architecture": "net", "strategy": strategy, "seed": seed,
               "learning_rate": lr, "strategy_config": config or {}, "image_size": 48, "num_train_epochs": 2,
               "train_runtime_s": 1.0, "environment": {"device": "CPU (2 cores)"}, "validation": metrics(validation),
               "test": metrics(test), "history": history, "strategy_state": state}  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture
def synthetic(tmp_path) -> Path:
    root = tmp_path / "results"
    for seed, noise in enumerate([-0.02, 0.0, 0.02]):
        for dataset in ("d1", "d2"):
            write_result(root, dataset, "ft", seed, 1e-3, validation=0.7, test=0.60 + noise)
            write_result(root, dataset, "ft", seed, 3e-3, validation=0.6, test=0.90)  # worse on validation
        # lpft: the 1e-3 setting wins on validation (and loses on test, which must not matter)
        write_result(root, "d1", "lpft", seed, 1e-3, validation=0.9, test=0.68 + noise / 2)
        write_result(root, "d1", "lpft", seed, 3e-3, validation=0.8, test=0.99)
        write_result(root, "d2", "lpft", seed, 1e-3, validation=0.9, test=0.55)
        write_result(root, "d2", "auto_rgn", seed, 1e-3, validation=0.9, test=0.71 + noise)
        write_result(root, "d1", "auto_rgn", seed, 1e-3, validation=0.9, test=0.59 + noise)
    failed = root / "d2" / "lp" / "seed0"
    failed.mkdir(parents=True)
    (failed / "failed.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))
    return root


def test_selection_is_on_validation_and_the_table_is_mean_and_std_over_seeds(synthetic):
    runs, failed = collect(synthetic)
    assert len(runs) == 27 and list(failed["cell"]) == ["d2/lp/seed0"]
    table = summary(select_on_validation(runs, "balanced_accuracy"), "balanced_accuracy").set_index(
        ["dataset", "strategy"]
    )
    assert table.loc[("d1", "ft"), "test_balanced_accuracy_mean"] == pytest.approx(0.60)
    assert table.loc[("d1", "ft"), "test_balanced_accuracy_std"] == pytest.approx(np.std([0.58, 0.60, 0.62], ddof=1))
    assert table.loc[("d1", "lpft"), "test_balanced_accuracy_mean"] == pytest.approx(0.68), "chosen on test"
    assert table.loc[("d1", "lpft"), "learning_rate"] == 1e-3
    assert table.loc[("d1", "lpft"), "n"] == 3 and table.loc[("d1", "lpft"), "best_epochs"] == "1 1 1"


def write_cell(root: Path, case: tuple[str, str], strategy: str, point: str, seed: int, validation: float,
               config: dict) -> None:  # fmt: skip
    """A study cell (<dataset>/<backbone>/<strategy>/<point>/seed<k>) of a backbone whose architecture is 'net'."""
    folder = root / case[0] / case[1] / strategy / point / f"seed{seed}"
    write_result(root, case[0], strategy, seed, 1e-3, validation, validation, folder, config)


def test_cases_are_named_by_the_grid_and_every_swept_key_is_chosen_on_shared_seeds(tmp_path):
    root = tmp_path / "runs"
    for backbone in ("net-a", "net-b"):  # two catalog entries of one architecture: two cases
        case = ("d", backbone)
        write_cell(root, case, "l2sp", "learning_rate=0.001-sp_alpha=0.01", 0, 0.9, {"sp_alpha": 0.01})
        # the other alpha ran on more seeds (its config drifted between seeds): it is still one setting, and it
        # loses on the seed both settings have (0.8 < 0.9) though its mean over its own seeds is higher
        for seed, validation in ((0, 0.8), (1, 0.99), (2, 0.99)):
            config = {"sp_alpha": 0.1, **({"new_knob": None} if seed else {})}
            write_cell(root, case, "l2sp", "learning_rate=0.001-sp_alpha=0.1", seed, validation, config)
    runs, _ = collect(root)
    assert sorted(runs["backbone"].unique()) == ["net-a", "net-b"] and set(runs["architecture"]) == {"net"}
    table = summary(select_on_validation(runs, "balanced_accuracy"), "balanced_accuracy")
    assert len(table) == 2
    assert list(table["settings"]) == ["learning_rate=0.001, sp_alpha=0.01"] * 2
    assert list(table["n"]) == [1, 1]


def test_holm_matches_a_hand_computation():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.5, np.nan, 0.6])  # NaN is not a comparison: m = 2; capped at 1
    assert adjusted[0] == adjusted[2] == 1.0 and np.isnan(adjusted[1])


def synthetic_runs(gains: dict[str, list[float]], backbones: dict[str, str] | None = None) -> pd.DataFrame:
    """Selected runs: ft at 0.70 (± 0.01 over 3 seeds) and each strategy at ft + its gain on each dataset."""
    rows = []
    for backbone, architecture in (backbones or {"lite": "tf_efficientnet_lite0"}).items():
        for strategy, per_dataset in {"ft": None, **gains}.items():
            for dataset in range(len(next(iter(gains.values())))):
                for seed, noise in enumerate((-0.01, 0.0, 0.01)):
                    gain = 0.0 if per_dataset is None else per_dataset[dataset]
                    rows.append({"dataset": f"d{dataset}", "backbone": backbone, "architecture": architecture,
                                 "strategy": strategy, "seed": seed, "epochs": 8, "strategy_config": "{}",
                                 "test_balanced_accuracy": 0.70 + gain + noise * (1 + dataset % 3)})  # fmt: skip
    return pd.DataFrame(rows)


def verdicts(selected: pd.DataFrame) -> dict[str, object]:
    differences = case_differences(selected, "balanced_accuracy")
    tests = dataset_level_tests(differences, [s for s in selected["strategy"].unique() if s != "ft"])
    architectures = selected.groupby("backbone")["architecture"].first().to_dict()
    claims = paper_claims(selected, "balanced_accuracy", differences, tests, architectures)
    return {name: claim for name, claim in zip(("lpft", "auto_rgn", "densenet"), claims, strict=True)}


def test_a_strategy_that_clearly_beats_ft_everywhere_is_reproduced_and_one_backbone_cannot_test_densenet():
    claims = verdicts(synthetic_runs({"lpft": [0.05] * 10, "auto_rgn": [0.0] * 9 + [0.11]}))
    assert claims["lpft"].verdict == REPRODUCED, claims["lpft"]
    assert "10 / 10 cases" in claims["lpft"].statistics
    assert claims["auto_rgn"].verdict == REPRODUCED, "+0.11 on every seed of one dataset"
    assert claims["densenet"].verdict == NOT_TESTABLE


def test_verdicts_against_too_few_cases_and_the_opposite_effect():
    few = verdicts(synthetic_runs({"lpft": [0.05] * 4}))
    assert few["lpft"].verdict == INCONCLUSIVE and "underpowered" in few["lpft"].why
    assert few["auto_rgn"].verdict == NOT_TESTABLE, "no auto_rgn runs"
    worse = verdicts(synthetic_runs({"lpft": [-0.05] * 10, "auto_rgn": [0.0] * 10}))
    assert worse["lpft"].verdict == NOT_REPRODUCED
    assert worse["auto_rgn"].verdict == NOT_REPRODUCED, "no case reaches a notable gain"


def test_the_lpft_verdict_says_how_its_epochs_split_against_fts_where_the_runs_record_it():
    selected = synthetic_runs({"lpft": [0.05] * 10})
    assert "epochs:" not in verdicts(selected)["lpft"].statistics, "runs that do not record their probe"
    lpft = selected["strategy"] == "lpft"
    selected.loc[lpft, "strategy_config"] = json.dumps({"lp_epochs": 1, "lp_share": 0.125})
    assert verdicts(selected)["lpft"].statistics.endswith("; epochs: LP-FT probing 1 + fine-tuning 7, ft 8")
    selected.loc[lpft, "epochs"] = 9  # Kumar et al.'s protocol: the probe on top of ft's epochs
    assert verdicts(selected)["lpft"].statistics.endswith("; epochs: LP-FT probing 1 + fine-tuning 8, ft 8")


def test_densenet_gaining_more_than_another_backbone_on_every_dataset_is_reproduced():
    both = {"densenet": "densenet121", "lite": "tf_efficientnet_lite0"}
    selected = synthetic_runs({"lpft": [0.05] * 10}, both)
    lite = (selected["backbone"] == "lite") & (selected["strategy"] == "lpft")
    selected.loc[lite, "test_balanced_accuracy"] -= 0.04  # lite gains 0.01, DenseNet 0.05
    assert verdicts(selected)["densenet"].verdict == REPRODUCED


def test_report_writes_tables_figures_verdicts_and_lists_failed_cells(synthetic, tmp_path):
    out = tmp_path / "report"
    report = write_report(synthetic, out).read_text()
    assert "| d1 | net | 0.600 ± 0.020 | **0.680 ± 0.010** (+0.080) |" in report
    assert "`d2/lp/seed0`: RuntimeError: out of memory" in report
    assert "| d1 | net | lpft | 3 | 0.680 ± 0.010 | 0.680 ± 0.010 | learning_rate=0.001 | 1 1 1 |" in report
    assert "Δ ≥ 0.02" in report and "not testable here" in report
    for name in ("delta_vs_ft.png", "training_curves.png", "auto_rgn_factors.png", "runs.csv", "runs.parquet",
                 "summary.csv", "vs_ft.csv"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    assert len(pd.read_parquet(out / "runs.parquet")) == 27
    assert r"\textbf{0.680 $\pm$ 0.010}" in (out / "summary.tex").read_text()
    assert [c["verdict"] for c in json.loads((out / "claims.json").read_text())["claims"]][2] == NOT_TESTABLE


def test_a_report_of_ft_alone_says_there_is_nothing_to_compare(tmp_path):
    for seed in range(3):
        write_result(tmp_path / "runs", "d1", "ft", seed, 1e-3, 0.7, 0.6 + 0.01 * seed)
    report = write_report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "| d1 | net | **0.610 ± 0.010** |" in report and "2 epochs. The paper" in report
    assert report.count("Nothing to compare: these results need `ft` runs and runs of another strategy.") == 2
    assert "Each comparison with ft" not in report and "Holm adjustment" not in report
    assert not (tmp_path / "report" / "delta_vs_ft.png").exists()


@pytest.mark.parametrize(
    ("study", "command"),
    [
        ("defaults", "scripts/run_defaults.sh runs/defaults"),
        ("cpu-v2", "scripts/run_cpu_v2.sh"),
        (
            "lpft-budget",
            "medft-benchmark hub_configs/benchmarks/lpft-budget.yaml --output_dir docs/results/lpft-budget/runs",
        ),
    ],
)
def test_a_committed_report_rebuilds_from_its_runs(study, command, tmp_path, monkeypatch):
    """The command in docs/results/<study>/README.md, into a fresh folder: every text file byte for byte, the
    parquet table by content, every figure present (PNG and parquet bytes carry the writing library's version)."""
    monkeypatch.chdir(ROOT)
    report_main([f"docs/results/{study}/runs", "--output_dir", str(tmp_path), "--command", command])
    kept = ROOT / "docs/results" / study / "report"
    committed = sorted(path.name for path in kept.iterdir())
    assert sorted(path.name for path in tmp_path.iterdir()) == committed
    for name in committed:
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(kept / name))
        elif not name.endswith(".png"):
            assert (tmp_path / name).read_bytes() == (kept / name).read_bytes(), name


@pytest.mark.parametrize("script", ["select_vs_grid", "more_seeds", "lpft_share", "lpft_extra_probe"])
def test_a_committed_comparison_rebuilds_from_its_runs(script, monkeypatch):
    """The `table` command of scripts/<script>.py, from the committed runs: the committed comparison.md, byte for
    byte (its numbers are the command's, not typed)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as `python scripts/<script>.py` has it: its helpers
    spec = importlib.util.spec_from_file_location(script, ROOT / "scripts" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.table() == (module.DOCS / "comparison.md").read_text()


def test_bench_runs_times_whole_runs_of_both_protocols_in_pairs(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """scripts/bench_runs.py: each protocol's own arguments plus the shared ones make a complete run (every repeat in a
    fresh folder, so nothing resumes), the protocols take turns at leading a pair, and the ratios it reports are the
    second's seconds over the first's, pair by pair, for whole runs and for the Trainer's train_runtime_s."""
    shared = ["--model", str(tiny_model), "--dataset", str(tiny_dataset), "--image_size", "32", "--use_cpu",
              "--save_model", "false", "--bootstrap_resamples", "0"]  # fmt: skip
    output = tmp_path / "pair"
    protocols = ["--first", "--strategy ft --num_train_epochs 1",
                 "--second", "--strategy lpft --num_train_epochs 2 --lp_epochs 1"]  # fmt: skip
    argv = ["bench_runs.py", "--repeats", "2", "--output", str(output), *protocols, "--", *shared]
    monkeypatch.setattr(sys, "argv", argv)
    spec = importlib.util.spec_from_file_location("bench_runs", ROOT / "scripts" / "bench_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    finished, folders, train = [], [], module.train

    def train_and_keep(argv: list[str]) -> None:
        train(argv)
        folders.append(argv[argv.index("--output_dir") + 1])
        finished.append(RunResult.load(folders[-1]))

    monkeypatch.setattr(module, "train", train_and_keep)
    module.main()
    record = json.loads(output.with_suffix(".json").read_text())
    assert [(r.strategy, r.num_train_epochs) for r in finished] == [("ft", 1), ("lpft", 2), ("lpft", 2), ("ft", 1)]
    assert len(set(folders)) == 4, "every run in a folder of its own: none resumed (or skipped) an earlier one"
    runtimes = [r.train_runtime_s for r in finished]
    assert record["train_runtime_s"] == {"first": [runtimes[0], runtimes[3]], "second": [runtimes[1], runtimes[2]]}
    for kind, times in (("whole run", record["seconds"]), ("train_runtime_s", record["train_runtime_s"])):
        expected = [b / a for a, b in zip(times["first"], times["second"], strict=True)]
        assert record["ratios"][kind] == pytest.approx(expected)
    assert "second / first, train_runtime_s, per pair" in output.with_suffix(".txt").read_text()


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tiny_model, tiny_dataset, tmp_path):
    from medft_hf.study import main

    spec = {
        "name": "mixed",
        "strategies": ["lp"],
        "backbones": [{"name": "tiny-net", "model": str(tiny_model)}],
        "datasets": [{"name": "missing", "path": str(tmp_path / "no-such-data")},
                     {"name": "tiny-data", "path": str(tiny_dataset)}],
        "seeds": [0],
        "training": {"image_size": 32, "num_train_epochs": 1, "use_cpu": True},
    }  # fmt: skip
    grid_file, out = tmp_path / "mixed.yaml", tmp_path / "out"
    grid_file.write_text(yaml.safe_dump(spec))
    checkpoint = out / "missing/tiny-net/lp/default/seed0/checkpoint-7"  # as an interrupted earlier try left it
    checkpoint.mkdir(parents=True)
    (checkpoint / STATE_FILE).write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main([str(grid_file), "--output_dir", str(out)])
    assert exit_info.value.code == 1
    failed = json.loads((out / "missing/tiny-net/lp/default/seed0/failed.json").read_text())
    assert "no-such-data: not found" in failed["error"]
    assert failed["resumes_from"] == "checkpoint-7", "failed.json names what a rerun continues from"
    assert (out / "tiny-data/tiny-net/lp/default/seed0/results.json").exists(), "the next cell still ran"
    report = write_report(out, tmp_path / "report").read_text()
    assert "`missing/tiny-net/lp/default/seed0`: MedftError" in report
