"""The claims of Davila, Colan & Hasegawa (2024, arXiv 2406.10050), each given a verdict on a study's runs.

Verdicts: "reproduced" (the claimed effect is seen and the test for it reaches ALPHA after correction), "not
reproduced" (it is not seen, and the data either show the opposite at ALPHA or exclude a notable effect),
"inconclusive" (neither), "not testable here" (the runs lack what the claim is about: a strategy, a backbone).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .report_stats import ALPHA, NOTABLE_GAIN, REFERENCE, per_case_tests, signed_rank_p, smallest_p

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE = (
    "reproduced", "not reproduced", "inconclusive", "not testable here"
)  # fmt: skip


@dataclass
class Claim:
    claim: str
    verdict: str
    statistics: str
    why: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lpft_beats_ft(tests: pd.DataFrame, selected: pd.DataFrame) -> Claim:
    """LP-FT gives notable improvements over ft in more than half of the cases."""
    claim = "LP-FT improves notably on full fine-tuning in more than half of the cases."
    if tests.empty or "lpft" not in set(tests["strategy"]):
        return Claim(claim, NOT_TESTABLE, "–", "no lpft (or no ft) runs to compare.")
    row = tests.set_index("strategy").loc["lpft"]
    share = row.notable_gains / row.cases
    statistics = (
        f"notable gains (Δ ≥ {NOTABLE_GAIN}) in {row.notable_gains} / {_count(row.cases, 'case')} ({share:.0%}); "
        f"mean Δ {row.mean_difference:+.3f}, 95% bootstrap interval over cases [{row.ci_low:+.3f}, "
        f"{row.ci_high:+.3f}]; signed-rank p = {row.p_value:.3g}, Holm-adjusted {row.p_holm:.3g}"
        + _probe_budget(selected)
    )
    if share > 0.5 and row.mean_difference > 0 and row.p_holm < ALPHA:
        return Claim(claim, REPRODUCED, statistics, "a majority of notable gains, and LP-FT > ft over cases.")
    if share <= 0.5 and row.mean_difference < 0 and row.p_holm < ALPHA:
        return Claim(claim, NOT_REPRODUCED, statistics, "LP-FT is below ft over cases.")
    if share <= 0.5 and row.ci_high < NOTABLE_GAIN:
        return Claim(claim, NOT_REPRODUCED, statistics, f"no majority of notable gains, and the interval excludes "
                     f"a mean gain of {NOTABLE_GAIN}.")  # fmt: skip
    return Claim(claim, INCONCLUSIVE, statistics, _undecided(row.cases, row.smallest_possible_p, len(tests)))


def _probe_budget(selected: pd.DataFrame) -> str:
    """How LP-FT's epochs split against ft's, where the runs record it: whether its probe came out of the epochs ft
    fine-tunes for (the study's default) or on top of them (Kumar et al.) changes what the verdict means."""
    lpft = selected[selected["strategy"] == "lpft"]
    probes = [json.loads(config).get("lp_epochs") for config in lpft["strategy_config"]]
    if not probes or None in probes:  # runs made before the probe's length was recorded
        return ""

    def epochs(values) -> str:
        return "/".join(str(value) for value in sorted(set(values)))

    fine_tuning = epochs(total - probe for total, probe in zip(lpft["epochs"], probes, strict=True))
    ft = epochs(selected.loc[selected["strategy"] == REFERENCE, "epochs"])
    return f"; epochs: LP-FT probing {epochs(probes)} + fine-tuning {fine_tuning}, ft {ft}"


def auto_rgn_large_gain(selected: pd.DataFrame, metric: str) -> Claim:
    """Auto-RGN gains up to 11% on some modalities: a case-specific claim, so it is tested per case (over seeds,
    Holm across the cases), not over cases."""
    claim = "Auto-RGN gains notably (up to 0.11 in the paper) on full fine-tuning for some modalities."
    tests = per_case_tests(selected, metric, "auto_rgn")
    if tests.empty:
        return Claim(claim, NOT_TESTABLE, "–", "no auto_rgn (or no ft) runs to compare.")
    best = tests.loc[tests["mean_difference"].idxmax()]
    statistics = (
        f"largest mean Δ {best.mean_difference:+.3f} ({best.dataset} / {best.backbone}, {_count(best.seeds, 'seed')}, "
        f"paired t-test p = {best.p_value:.3g}, Holm-adjusted over {_count(len(tests), 'case')} {best.p_holm:.3g})"
    )
    notable = tests[tests["mean_difference"] >= NOTABLE_GAIN]
    if (notable["p_holm"] < ALPHA).any():
        return Claim(claim, REPRODUCED, statistics, "a notable gain beyond the seed noise in at least one case.")
    if notable.empty:
        return Claim(claim, NOT_REPRODUCED, statistics, f"no case's mean gain reaches {NOTABLE_GAIN}.")
    return Claim(claim, INCONCLUSIVE, statistics, "a notable mean gain, but not beyond the seed noise.")


def densenet_benefits_most(differences: pd.DataFrame, architectures: dict[str, str]) -> Claim:
    """DenseNet gains more than the other backbones from strategies other than ft. A case's benefit is the mean
    difference to ft over those strategies; DenseNet's benefit minus the other backbones' mean, paired by dataset,
    is tested over datasets."""
    claim = "DenseNet benefits more than the other backbones from alternatives to full fine-tuning."
    backbones = sorted(architectures)
    densenets = [name for name in backbones if "densenet" in architectures[name].lower()]
    if len(backbones) < 2 or not densenets or len(densenets) == len(backbones):
        return Claim(claim, NOT_TESTABLE, f"backbones: {', '.join(backbones) or '–'}",
                     "needs a DenseNet and at least one other backbone.")  # fmt: skip
    benefit = differences.mean(axis=1).unstack("backbone")
    is_densenet = benefit.columns.isin(densenets)
    gap = (benefit.loc[:, is_densenet].mean(axis=1) - benefit.loc[:, ~is_densenet].mean(axis=1)).dropna()
    if gap.empty:
        return Claim(claim, NOT_TESTABLE, "–", "no dataset has both a DenseNet and another backbone.")
    per_backbone = benefit.mean()
    largest = per_backbone.idxmax()
    p = signed_rank_p(gap.to_numpy())
    statistics = (
        "mean Δ to ft over strategies and datasets: "
        + ", ".join(f"{name} {value:+.3f}" for name, value in per_backbone.items())
        + f"; DenseNet − others, paired by dataset: mean {gap.mean():+.3f} over {_count(gap.size, 'dataset')}, "
        f"signed-rank p = {p:.3g}"
    )
    if largest in densenets and gap.mean() > 0 and p < ALPHA:
        return Claim(claim, REPRODUCED, statistics, "DenseNet gains most, beyond the variation over datasets.")
    if largest not in densenets and gap.mean() < 0 and p < ALPHA:
        return Claim(claim, NOT_REPRODUCED, statistics, "another backbone gains more, beyond the variation.")
    return Claim(claim, INCONCLUSIVE, statistics, _undecided(gap.size, smallest_p(gap.size), 1, "dataset"))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _undecided(cases: int, smallest: float, comparisons: int, unit: str = "case") -> str:
    if smallest * comparisons >= ALPHA:
        return (
            f"underpowered: with {_count(cases, unit)} the exact test's smallest p is {smallest:.3g}"
            + (f" ({smallest * comparisons:.3g} after Holm over {comparisons})" if comparisons > 1 else "")
            + f", never below {ALPHA}."
        )
    return f"the difference is not beyond the variation over cases at {ALPHA}."


def paper_claims(
    selected: pd.DataFrame, metric: str, differences: pd.DataFrame, tests: pd.DataFrame, architectures: dict[str, str]
) -> list[Claim]:
    """Every claim of the paper's abstract that these runs can speak to, in its order."""
    return [
        lpft_beats_ft(tests, selected),
        auto_rgn_large_gain(selected, metric),
        densenet_benefits_most(differences, architectures),
    ]


def best_alternative_per_backbone(differences: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per backbone, the strategy other than ft with the largest mean difference to ft over datasets."""
    means = differences.groupby(level="backbone").mean()
    return {
        backbone: {"strategy": str(row.idxmax()), "mean_difference": float(row.max())}
        for backbone, row in means.iterrows()
        if not np.isnan(row.max())
    }
