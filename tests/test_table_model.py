"""One table model, two renderings: LaTeX and HTML from the same cells, with every special
character escaped for each format; bold by a paired test over seeds, worked out by hand."""
import json
import math

import pytest

from pipeline.reports.report_pages import tables_page
from pipeline.reports.table_model import Cell, Table, to_html, to_latex
from pipeline.reports.tables import Results, main_table, paired_p_value

TABLE = Table(label="tab:my_study-my_images-main", caption="Error (%) on my_images, mean ± std.",
              header=[[Cell(""), Cell("40 labels", span=2)], [Cell("Algorithm"), Cell("Ours"),
                                                              Cell("Δ")]],
              rows=[[Cell("Dash"), Cell("4.08 ± 0.10", bold=True), Cell("−0.20")],
                    [Cell("R&D_1"), Cell("–"), Cell("5.00", mark="a")]],
              notes=["(a) Paper #1, 50% {of} the runs."])


def test_latex_escapes_tex_specials_in_caption_cells_and_notes():
    tex = to_latex(TABLE)
    assert r"\caption{Error (\%) on my\_images, mean $\pm$ std.}" in tex
    assert r"\label{tab:my_study-my_images-main}" in tex   # labels take underscores as they are
    assert r" & \multicolumn{2}{c}{40 labels} \\" in tex and r"\cmidrule(lr){2-3}" in tex
    assert r"Dash & \textbf{4.08 $\pm$ 0.10} & $-$0.20 \\" in tex
    assert r"R\&D\_1 & -- & 5.00$^{a}$ \\" in tex
    assert r"(a) Paper \#1, 50\% \{of\} the runs." in tex
    assert r"\begin{tabular}{lcc}" in tex


def test_html_renders_the_same_cells_escaped_for_html():
    page = to_html(TABLE)
    assert "<caption>Error (%) on my_images, mean ± std.</caption>" in page
    assert '<th colspan="2">40 labels</th>' in page and "<th>Δ</th>" in page
    assert '<tr class="midrule"><td>Dash</td><td><b>4.08 ± 0.10</b></td><td>−0.20</td></tr>' in page
    assert "<td>R&amp;D_1</td><td>–</td><td>5.00<sup>a</sup></td>" in page


def test_the_report_page_renders_the_model_the_tables_rule_wrote(tmp_path):
    path = tmp_path / "main.json"
    path.write_text(json.dumps(TABLE.to_json()))
    assert Table.from_json(json.loads(path.read_text())) == TABLE
    page = tables_page([path])
    assert to_html(TABLE) in page and "R\\&amp;D\\_1" in page   # the LaTeX source, escaped


def test_paired_p_value_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 dof: p = 0.0742
    assert paired_p_value([11.0, 12.0, 13.0], [10.0, 10.0, 10.0]) == pytest.approx(0.0742, abs=1e-4)
    assert paired_p_value([5.0, 6.0], [4.0, 5.0]) == 0.0       # worse on every seed by as much
    assert paired_p_value([5.0, 6.0], [5.0, 6.0]) == 1.0
    assert math.isnan(paired_p_value([5.0], [4.0]))


def summary(algorithm: str, values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return {"study": "my_study", "dataset": "my_images", "n_labels": 40, "algorithm": algorithm,
            "model": "small_cnn", "last_k": 5,
            "metrics": {"ema/best_error": {"mean": mean, "std": std, "n": len(values),
                                           "values": values}},
            "seeds": [{"seed": seed} for seed in range(len(values))]}


def test_bold_is_the_lowest_mean_and_a_mark_what_a_paired_test_cannot_tell_from_it():
    """The 3-seed digits table bolded nearly every cell; now only the lowest mean is bold, and a
    dagger, explained in the notes, marks a cell the paired test cannot tell from it."""
    summaries = [summary("dash", [10.0, 10.0, 10.0]),
                 summary("fixmatch", [11.0, 12.0, 13.0]),      # p = 0.074: tied with the best
                 summary("supervised", [20.0, 21.0, 22.0])]    # p = 0.0027: worse
    table = main_table(Results(summaries, "ema", "best"))
    assert [(row[1].bold, row[1].mark) for row in table.rows] == [(True, ""), (False, "†"),
                                                                   (False, "")]
    assert table.label == "tab:my_study-my_images-main"
    assert "40 labels: Dash lowest; †: FixMatch (p = 0.07)." in table.notes
    assert any(note.startswith("Bold: the lowest mean of a column. †: a cell that a two-sided "
                               "paired t-test") for note in table.notes)
    latex = to_latex(table)
    assert r"12.00 $\pm$ 1.00$^{\dag{}}$" in latex and r"\dag{}: FixMatch" in latex


def test_a_lower_mean_can_be_significantly_worse_and_two_equal_lowest_means_are_both_bold():
    """As in the digits table: a cell worse than the best on every seed is not marked even with a
    mean below a marked one; two cells that print the same lowest mean are both bold."""
    summaries = [summary("dash", [10.0, 12.0, 14.0]),
                 summary("flexmatch", [10.0, 12.0, 14.0]),
                 summary("pseudolabel", [11.0, 13.0, 15.5]),   # worse on every seed: p = 0.03
                 summary("supervised", [9.0, 19.0, 16.0])]     # noisy: p = 0.37
    table = main_table(Results(summaries, "ema", "best"))
    assert [(row[1].bold, row[1].mark) for row in table.rows] == [
        (True, ""), (True, ""), (False, ""), (False, "†")]
    assert "40 labels: Dash and FlexMatch lowest; †: Supervised (p = 0.37)." in table.notes


def test_no_repository_path_in_the_latex_notes_and_a_users_images_named_after_the_study():
    table = main_table(Results([summary("dash", [10.0, 11.0]), summary("fixmatch", [12.0, 13.0])],
                               "ema", "best"))
    assert not any("results/" in note or ".html" in note for note in table.notes)
    image_study = [{**summary("dash", [10.0, 11.0]), "dataset": "image_folder"}]
    caption = main_table(Results(image_study, "ema", "best")).caption
    assert caption.startswith("Test error rate (%) on my_study, mean ± std over 2 seeds")
    assert "image_folder" not in caption


    assert any("best test error over training (checkpoint rule) of the EMA weights of small_cnn"
               in note for note in table.notes)
