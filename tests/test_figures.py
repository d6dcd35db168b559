"""Figures and report pages on small hand-made result files: which figures a study gets, Dash's
rho schedule and the rho_hat read back from logged values, byte-identical PDFs across reruns,
and the HTML rendering of the LaTeX tables for `snakemake --report`."""
import csv
import json
import math
from pathlib import Path

import pytest

from pipeline.config import default_params
from pipeline.errors import UserError
from pipeline.reports import dash_paper, figures, plotting
from pipeline.reports.report_pages import run_times_rows

DASH = {**default_params()["algorithms"]["dash"], "variant": "official", "steps_per_epoch": 3,
        "warmup_epochs": 2, "gamma": 1.27, "rho_min": 0.05}
RHO_HAT = 2.0
STEPS, LOG_EVERY = 60, 5


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def logged_rho(settings: dict, rho_hat: float) -> list[dict]:
    """What the trainer logs: per window of LOG_EVERY steps the mean rho and rho_hat, NaN while
    any step of the window had no threshold (inf)."""
    rows = []
    for end in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
        values = [dash_paper.dash_rho(settings, step, rho_hat, settings["gamma"],
                                   settings["rho_min"]) for step in range(end - LOG_EVERY, end)]
        warm_up = math.inf in values
        rows.append({"step": end, "train/rho": math.nan if warm_up else sum(values) / len(values),
                     "train/rho_hat": math.nan if warm_up else rho_hat})
    return rows


@pytest.fixture
def settings():
    return DASH


@pytest.fixture
def results(tmp_path, settings) -> dict[str, list[Path]]:
    """results/t/digits-10/<algorithm>/seed<k>/ with evaluations.csv and train_stats.csv."""
    evaluations, stats = [], []
    for algorithm_index, algorithm in enumerate(("supervised", "fixmatch", "dash")):
        for seed in (0, 1):
            run = tmp_path / f"results/t/digits-10/{algorithm}/seed{seed}"
            evaluations.append(write_csv(run / "evaluations.csv", [
                {"step": step, "ema/error": 80 - step / 2 - 5 * algorithm_index - seed,
                 "raw/error": 70 - step / 3} for step in range(10, STEPS + 1, 10)]))
            # the run's resolved config, as pipeline.runs.train writes it beside the CSVs
            (run / "metrics.json").write_text(json.dumps({"run": {
                "dataset": "digits", "n_labels": 10, "algorithm": algorithm, "seed": seed,
                "algorithm_params": settings if algorithm == "dash" else {}}}))
            if algorithm == "supervised":
                continue
            rows = logged_rho(settings, RHO_HAT + seed) if algorithm == "dash" else \
                [{"step": step, "train/rho": math.nan} for step in range(5, STEPS + 1, 5)]
            for row in rows:
                row.update({"train/n_selected_correct": row["step"] / 2 + seed,
                            "train/n_selected_wrong": 30 - row["step"] / 3,
                            "train/mask_rate": min(1.0, row["step"] / STEPS)})
            stats.append(write_csv(run / "train_stats.csv", rows))
    return {"evaluations": evaluations, "stats": stats,
            "dash_runs": [tmp_path / f"results/t/digits-10/dash/seed{seed}/metrics.json"
                          for seed in (0, 1)]}


def test_a_study_gets_the_dash_figures_only_with_those_algorithms():
    assert figures.figures_for(["supervised"]) == ["error_curves"]
    assert figures.figures_for(["supervised", "fixmatch"]) == ["error_curves", "pseudo_labels",
                                                               "selection"]
    assert figures.figures_for(["supervised", "flexmatch"]) == ["error_curves", "selection"]
    assert figures.figures_for(["dash", "fixmatch"]) == ["error_curves", "dash_rho",
                                                         "pseudo_labels", "selection"]
    # the algorithms that select pseudo-labels have the selection figure: their stats are read
    assert figures.stats_algorithms(["supervised", "dash", "meanteacher", "uda", "fixmatch"]) == [
        "dash", "uda", "fixmatch"]
    assert figures.figure_algorithms("pseudo_labels", ["uda", "fixmatch", "dash"]) == [
        "fixmatch", "dash"]   # the Dash paper's comparison only



def test_an_algorithms_card_decides_which_figures_it_gets_and_which_runs_they_read(monkeypatch):
    cards = {"fixmatch": ("pseudo_labels",), "dash": ("pseudo_labels", "dash_rho"),
             "flexmatch": ("pseudo_labels",)}   # as if flexmatch's module listed pseudo_labels
    monkeypatch.setattr(figures, "own_figures", lambda name: cards.get(name, ()))
    assert figures.figures_for(["supervised", "flexmatch"]) == ["error_curves", "pseudo_labels"]
    assert figures.stats_algorithms(["supervised", "flexmatch", "dash"]) == ["flexmatch", "dash"]
    assert figures.figure_algorithms("pseudo_labels", ["dash", "supervised", "flexmatch",
                                                       "fixmatch"]) == ["dash", "flexmatch",
                                                                        "fixmatch"]
    assert figures.figure_algorithms("dash_rho", ["fixmatch", "dash"]) == ["dash"]


def test_pseudo_labels_draws_its_algorithms_in_the_studys_order(results, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(dash_paper, "plot_mean_and_band",
                        lambda ax, steps, values, label: drawn.append(label))
    dash_first = sorted(results["evaluations"], key=lambda path: "dash" not in str(path))
    figures.main(["--evaluations", *map(str, dash_first), "--train-stats",
                  *map(str, results["stats"]), "--figures", "pseudo_labels", "--out",
                  str(tmp_path)])
    assert drawn[:2] == ["Dash", "FixMatch"]    # the first panel: the study's order


def test_each_figure_picks_its_runs_from_every_run_of_the_study(results, tmp_path):
    every_run = [path.with_name("metrics.json") for path in results["evaluations"]]
    assert dash_paper.dash_settings(every_run) == dash_paper.dash_settings(results["dash_runs"])
    make_figures(results, tmp_path / "dash_runs")
    make_figures({**results, "dash_runs": every_run}, tmp_path / "every_run")
    for name in ("dash_rho.pdf", "pseudo_labels.pdf", "error_curves.pdf"):
        assert (tmp_path / "dash_runs" / name).read_bytes() == \
            (tmp_path / "every_run" / name).read_bytes()

def test_official_rho_decays_by_gamma_every_nine_epochs_after_warm_up(settings):
    rho = lambda step, gamma=1.27: dash_paper.dash_rho(settings, step, RHO_HAT, gamma, 0.05)
    assert rho(5) == math.inf                      # epoch 1 < warmup_epochs = 2
    assert rho(6) == pytest.approx(RHO_HAT)        # epoch 2: floor((2 - 1) / 9) = 0
    assert rho(29) == pytest.approx(RHO_HAT)       # epoch 9
    assert rho(30) == pytest.approx(RHO_HAT / 1.27)          # epoch 10
    assert rho(57) == pytest.approx(RHO_HAT / 1.27 ** 2)     # epoch 19
    assert rho(57, gamma=100.0) == 0.05                      # never below rho_min


def test_usb_rho_starts_after_the_supervised_warm_up():
    settings = {**DASH, "variant": "usb", "warmup_steps": 6, "C": 1.0001}
    assert dash_paper.dash_rho(settings, 5, RHO_HAT, 1.27, 0.05) == math.inf
    assert dash_paper.dash_rho(settings, 6, RHO_HAT, 1.27, 0.05) == pytest.approx(1.0001 * RHO_HAT)
    assert dash_paper.dash_rho(settings, 36, RHO_HAT, 1.27, 0.05) == pytest.approx(
        1.0001 * RHO_HAT / 1.27)


def test_rho_hat_and_the_settings_are_what_the_runs_logged(settings, results):
    assert dash_paper.logged_rho_hat(logged_rho(settings, 1.7)) == 1.7
    with pytest.raises(UserError, match="no train/rho_hat after its warm-up"):
        dash_paper.logged_rho_hat([{"step": 5, "train/rho": math.nan, "train/rho_hat": math.nan}])
    assert dash_paper.dash_settings(results["dash_runs"]) == settings
    other = results["dash_runs"][1]
    run = json.loads(other.read_text())["run"]
    other.write_text(json.dumps({"run": {**run, "algorithm_params": {**settings, "gamma": 1.1}}}))
    with pytest.raises(UserError, match="used different hyperparameters"):
        dash_paper.dash_settings(results["dash_runs"])


def make_figures(results, out: Path) -> None:
    figures.main(["--evaluations", *map(str, results["evaluations"]),
                  "--train-stats", *map(str, results["stats"]),
                  "--figures", "error_curves", "dash_rho", "pseudo_labels", "selection",
                  "--runs", *map(str, results["dash_runs"]), "--out", str(out)])


def test_the_selection_figure_draws_mask_rate_precision_and_wrong_selections(results, tmp_path,
                                                                             monkeypatch):
    from pipeline.reports import selection

    runs = plotting.group_runs(results["stats"])
    steps, precision = selection.panel_values(runs[("digits", 10, "fixmatch")], "precision")
    # step 30, seed 0: correct 15, wrong 20 -> 15 / 35; seed 1: 16 / 36
    at = list(steps).index(30)
    assert precision[:, at].tolist() == pytest.approx([15 / 35, 16 / 36])
    _, wrong = selection.panel_values(runs[("digits", 10, "fixmatch")], "wrong")
    assert wrong[:, at].tolist() == [20.0, 20.0]
    drawn = []
    monkeypatch.setattr(selection, "plot_mean_and_band",
                        lambda ax, steps, values, label, **style: drawn.append(label))
    figures.main(["--evaluations", *map(str, results["evaluations"]), "--train-stats",
                  *map(str, results["stats"]), "--figures", "selection",
                  "--out", str(tmp_path / "figures")])
    assert drawn == ["FixMatch", "Dash"] * 3   # three panels, the study's order
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["selection.pdf",
                                                                        "selection.png"]


def test_figures_are_byte_identical_across_reruns(results, tmp_path):
    make_figures(results, tmp_path / "first")
    make_figures(results, tmp_path / "second")
    names = sorted(path.name for path in (tmp_path / "first").iterdir())
    assert names == ["dash_rho.pdf", "dash_rho.png", "error_curves.pdf", "error_curves.png",
                     "pseudo_labels.pdf", "pseudo_labels.png", "selection.pdf", "selection.png"]
    for name in names:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    pdf = (tmp_path / "first/dash_rho.pdf").read_bytes()
    assert b"CreationDate" not in pdf and b"matplotlib" not in pdf.lower()


def test_dash_rho_without_dash_runs_is_a_clear_error(results, tmp_path):
    with pytest.raises(UserError, match=r"no train_stats\.csv of a dash run"):
        figures.main.__wrapped__(["--evaluations", *map(str, results["evaluations"]),
                                  "--figures", "dash_rho", "--out", str(tmp_path)])


def test_run_times_refuse_a_benchmark_file_of_another_job(tmp_path):
    run = tmp_path / "results/t/digits-10/dash/seed0/run.json"
    run.parent.mkdir(parents=True)
    run.with_name("metrics.json").write_text(json.dumps({"run": {
        "dataset": "digits", "n_labels": 10, "algorithm": "dash", "seed": 0}}))
    with pytest.raises(UserError, match=r"expected a file named digits-10-dash-seed0\.tsv"):
        run_times_rows([run], [tmp_path / "digits-10-dash-seed1.tsv"])


def test_the_error_curves_are_written_as_one_csv_per_label_budget_for_dvc_plots(results,
                                                                               tmp_path):
    """One chart per label budget with a line per algorithm (dvc.yaml's plots): a column per
    algorithm, named as in the tables, empty where an algorithm did not evaluate."""
    groups = plotting.group_runs(results["evaluations"])
    groups[("digits", 10, "dash")][0].append({"step": 65.0, "ema/error": 40.0})   # an extra step
    groups[("digits", 10, "dash")][1].append({"step": 65.0, "ema/error": 42.0})
    written = figures.write_curves(groups, "ema", tmp_path / "plots")
    assert [path.relative_to(tmp_path).as_posix() for path in written] == ["plots/10-labels.csv"]
    lines = written[0].read_text().splitlines()
    # at step 10: 80 - 10 / 2 - 5 x the algorithm's place - the seed, mean over seeds 0 and 1
    assert lines[0] == "step,Supervised,FixMatch,Dash"
    assert lines[1] == "10,74.5000,69.5000,64.5000"
    assert lines[-1] == "65,,,41.0000"


def test_a_users_image_folder_is_named_after_the_study_in_the_figure_titles(results, tmp_path,
                                                                          monkeypatch):
    for path in results["dash_runs"]:   # as if the study were `my_images` on an image folder
        run = json.loads(path.read_text())
        run["run"].update(dataset="image_folder", study="my_images")
        path.write_text(json.dumps(run))
    assert plotting.data_names(tuple(results["dash_runs"])) == {"image_folder": "my_images"}
    drawn = []
    monkeypatch.setattr(figures, "save", lambda figure, out_dir, stem: drawn.append(figure) or [])
    inputs = plotting.FigureInputs(evaluations={("image_folder", 10, "dash"): [[
        {"step": 10.0, "ema/error": 50.0}]]}, train_stats={}, runs=tuple(results["dash_runs"]),
        algorithms=("dash",))
    figures.plot_error_curves(inputs, tmp_path)
    assert [ax.get_title() for ax in drawn[0].axes] == ["my_images, 10 labels"]
