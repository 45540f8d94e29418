"""The claims table (darht.report.claims): group resolution, the test chosen, the verdict rule,
scipy agreement, config errors, and the report built from a run directory's study.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest, permutation_test, ttest_ind

from darht.errors import DarhtError
from darht.report.build import spread, write_report
from darht.report.claims import check_claims, check_convergence, claims_table, resolve
from tests.test_stats import make_record, w_by_index

CLAIM = {"id": "c1", "paper": "4.2", "claim": "A beats B", "a": "darht", "b": "rslad", "attack": "pgd",
         "expect": "greater"}


def seeded(name: str, p_robust: float, seeds=(0, 1, 2), offset: int = 0) -> dict:
    return {f"student-{name}-s{s}": make_record(offset + s, p_robust=p_robust) for s in seeds}


def test_groups_resolve_by_seed_exact_name_and_face():
    recs = {**seeded("darht", 0.7), "student-rslad": make_record(9), "student-darht-official-s0": make_record(8)}
    assert [k for k, _ in resolve("darht", recs)] == ["student-darht-s0", "student-darht-s1", "student-darht-s2"]
    assert [k for k, _ in resolve("rslad", recs)] == ["student-rslad"]
    assert [k for k, _ in resolve("student-darht-s1", recs)] == ["student-darht-s1"]
    det = make_record(3, p_robust=0.2)
    recs["student-mc"] = {**make_record(4), "faces": {"deterministic": {k: det[k] for k in ("summary", "trials",
                                                                                         "examples")}}}
    ((name, face),) = resolve("mc@deterministic", recs)
    assert name == "student-mc@deterministic" and face["summary"] == det["summary"]
    with pytest.raises(DarhtError, match="no record for 'nope'"):
        resolve("nope", recs)
    with pytest.raises(DarhtError, match="has no deterministic face"):
        resolve("rslad@deterministic", recs)


def test_across_seeds_is_welch_and_the_verdicts_follow_the_interval():
    recs = {**seeded("darht", 0.80), **seeded("rslad", 0.55, offset=10)}
    (row,) = claims_table([CLAIM], recs)
    xa = [np.mean(list(w_by_index(r, "pgd").values())) for k, r in recs.items() if "darht" in k]
    xb = [np.mean(list(w_by_index(r, "pgd").values())) for k, r in recs.items() if "rslad" in k]
    assert row["test"] == "Welch across seeds"
    assert row["p_value"] == pytest.approx(ttest_ind(xa, xb, equal_var=False).pvalue, rel=1e-9)
    assert row["effect"] == pytest.approx(np.mean(xa) - np.mean(xb), abs=1e-12)
    assert row["ci"][0] > 0 and row["verdict"] == "reproduced"
    (opposite,) = claims_table([{**CLAIM, "expect": "less"}], recs)
    assert opposite["verdict"] == "contradicted"
    same = {**seeded("darht", 0.7), **seeded("rslad", 0.7, offset=10)}
    (row,) = claims_table([CLAIM], same)
    assert row["ci"][0] < 0 < row["ci"][1] and row["verdict"] == "not shown"


@pytest.mark.parametrize("draws", [1, 20])
def test_one_record_each_is_paired_bootstrap_and_the_sign_flip_p_of_the_same_difference(draws):
    recs = {"student-darht": make_record(0, p_robust=0.75, draws=draws),
            "student-rslad": make_record(1, p_robust=0.6, draws=draws)}
    (row,) = claims_table([CLAIM], recs)
    wa, wb = w_by_index(recs["student-darht"], "pgd"), w_by_index(recs["student-rslad"], "pgd")
    d = np.array([wa[i] - wb[i] for i in wa])
    assert row["test"] == "paired bootstrap + sign-flip"
    assert row["effect"] == pytest.approx(d.mean(), abs=1e-12)
    ref = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=20_000, random_state=0).pvalue
    assert row["p_value"] == pytest.approx(ref, abs=0.01)  # both Monte Carlo; the effect is large, p tiny
    assert row["ci"][0] <= row["effect"] <= row["ci"][1]
    close = {"student-darht": make_record(0, p_robust=0.62, draws=draws),
             "student-rslad": make_record(1, p_robust=0.6, draws=draws)}
    (row,) = claims_table([CLAIM], close)
    wa, wb = w_by_index(close["student-darht"], "pgd"), w_by_index(close["student-rslad"], "pgd")
    d = np.array([wa[i] - wb[i] for i in wa])
    ref = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=20_000, random_state=0).pvalue
    assert 0.01 < ref and row["p_value"] == pytest.approx(ref, abs=0.02)
    # the p and the interval test the same difference: p < 0.05 exactly when the CI excludes 0 (up to MC noise)
    assert (row["p_value"] < 0.05) == (row["ci"][0] > 0 or row["ci"][1] < 0) or abs(row["p_value"] - 0.05) < 0.01
    mixed = {**seeded("darht", 0.75), "student-rslad": make_record(1, p_robust=0.6)}
    (row,) = claims_table([CLAIM], mixed)
    assert "3 vs 1 records" in row["notes"][0]


@pytest.mark.parametrize("claims, words", [
    ({"id": "x"}, "claims must be a list"),
    ([{**CLAIM, "expect": "bigger"}], "claims[0].expect must be one of greater, less"),
    ([{k: v for k, v in CLAIM.items() if k != "b"}], "claims[0]: missing b"),
    ([{**CLAIM, "color": 1}], "unknown key 'color'"),
    ([CLAIM, CLAIM], "claim id 'c1' is used twice"),
])
def test_bad_claims_are_one_line_errors(claims, words):
    with pytest.raises(DarhtError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_claims(claims)


@pytest.mark.parametrize("conv, words", [
    ({"last": 1, "max_spread": 0.02}, "convergence.last must be an integer >= 2"),
    ({"last": 3, "max_spread": 0}, "convergence.max_spread must be a number in (0, 1]"),
    ({"last": 3}, "convergence must be"),
])
def test_bad_convergence_is_a_one_line_error(conv, words):
    with pytest.raises(DarhtError, match=words.replace("(", r"\(").replace("]", r"\]")):
        check_convergence(conv)


def test_spread_is_the_range_of_the_last_epochs():
    ms = [{"val_robust": v} for v in (0.5, 0.7, 0.71, 0.69, 0.705)]
    assert spread(ms, 3) == pytest.approx(0.02)
    assert spread(ms, 6) is None


def test_report_writes_the_claims_table_and_flags_unconverged_runs(tmp_path):
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    recs = {**seeded("darht", 0.80), **seeded("rslad", 0.55, offset=10)}
    for k, r in recs.items():  # make_record's records plus the fields a report's header reads
        (run / "records" / f"{k}.json").write_text(json.dumps({**r, "n": 100, "trials_count": 4}))
    for name, curve in (("darht-s0", [0.5, 0.6, 0.70, 0.71, 0.70]), ("rslad-s0", [0.3, 0.4, 0.5, 0.6, 0.7])):
        d = run / "students" / name
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "val_clean": 0.8, "val_robust": v}) + "\n"
                                                 for i, v in enumerate(curve)))
        (d / "best.json").write_text(json.dumps({"meta": {"method": name[:-3], "epoch": 5}, "spec": {"name": "small-cnn"}}))
    (run / "study.json").write_text(json.dumps({"claims": [CLAIM], "convergence": {"last": 3, "max_spread": 0.02}}))
    text = write_report(run).read_text()
    assert "## Claims" in text and "**reproduced**" in text
    assert "**not flat: student rslad-s0**" in text
    rows = json.loads((run / "report" / "claims.json").read_text())
    assert rows[0]["id"] == "c1" and rows[0]["verdict"] == "reproduced"
    assert (run / "report" / "epochs.png").stat().st_size > 0


def test_groups_average_seeds_and_split_the_deterministic_face(tmp_path):
    from darht.report.tables import groups, groups_markdown

    recs = {**seeded("darht", 0.80), "student-rslad": make_record(9, p_robust=0.5)}
    det = make_record(3, p_robust=0.2)
    recs["student-darht-s1"] = {**recs["student-darht-s1"],
                                "faces": {"deterministic": {k: det[k] for k in ("summary", "trials", "examples")}}}
    rows = {r["group"]: r for r in groups(recs)}
    assert set(rows) == {"student-darht", "student-darht@deterministic", "student-rslad"}
    w = [recs[f"student-darht-s{s}"]["summary"]["w_robust"]["worst"]["mean"] for s in range(3)]
    g = rows["student-darht"]
    assert g["seeds"] == 3 and g["w_robust_worst"] == pytest.approx(np.mean(w), abs=1e-12)
    assert g["w_robust_worst_sd"] == pytest.approx(np.std(w, ddof=1), abs=1e-12)
    assert g["robust"]["pgd"] == pytest.approx(np.mean([recs[f"student-darht-s{s}"]["summary"]["robust"]["pgd"]["mean"]
                                                        for s in range(3)]), abs=1e-12)
    d = rows["student-darht@deterministic"]
    assert d["records"] == ["student-darht-s1"] and d["w_robust_worst_sd"] is None
    assert d["clean"] == det["summary"]["clean"]["mean"]
    text = groups_markdown(list(rows.values()))
    assert f"| student-darht | 3 | {100 * g['clean']:.2f} |" in text
    assert f"{100 * np.mean(w):.2f} ± {100 * np.std(w, ddof=1):.2f} |" in text
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    for k, r in recs.items():
        (run / "records" / f"{k}.json").write_text(json.dumps({**r, "n": 100, "trials_count": 4}))
    report = write_report(run).read_text()
    assert "## By model, over training seeds" in report and text in report
    assert json.loads((run / "report" / "groups.json").read_text())[0]["group"] == "student-darht"


def test_plots_pool_the_seeds_of_one_model(tmp_path, monkeypatch):
    import matplotlib.axes

    from darht.report import plots

    assert plots.seed_group("student-darht-s12") == "student-darht"
    assert plots.seed_group("students-2cnn") == "students-2cnn"
    recs = {k: {**r, "trials_count": 4} for k, r in {**seeded("darht", 0.8), "student-rslad": make_record(5)}.items()}
    det = make_record(7, p_robust=0.3)
    recs["student-darht-s2"]["faces"] = {"deterministic": {k: det[k] for k in ("summary", "trials")}}
    boxes = []
    real = matplotlib.axes.Axes.boxplot
    monkeypatch.setattr(matplotlib.axes.Axes, "boxplot", lambda self, data, **kw: boxes.append(data) or real(self, data, **kw))
    assert plots.w_robust_distributions(recs, tmp_path / "w.png").stat().st_size > 0
    pgd = boxes[[*sorted(recs["student-rslad"]["summary"]["w_robust"])].index("pgd")]
    assert [len(b) for b in pgd] == [3 * 4, 4, 4]  # 3 seeds x 4 trials pooled; s2's dropout-off face; rslad
    assert sorted(pgd[1]) == sorted(100 * t["w_robust"]["pgd"] for t in det["trials"])
    fills = []
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda self, x, lo, hi, **kw: fills.append((lo, hi)))
    runs = {f"students-darht-s{s}": [{"epoch": e, "val_clean": 0.8, "val_robust": 0.5 + 0.1 * s} for e in (1, 2)]
            for s in range(3)}
    runs["students-ard"] = [{"epoch": 1, "val_clean": 0.7, "val_robust": 0.4}]
    assert plots.epoch_curves(runs, tmp_path / "e.png").stat().st_size > 0
    assert len(fills) == 2  # one band per panel, for the seeded model only
    lo, hi = fills[1]
    assert list(lo) == pytest.approx([65.0, 65.0]) and list(hi) == pytest.approx([75.0, 75.0])


T_CLAIM = {"id": "t41", "paper": "4.1", "claim": "less transfer to the ViT", "source": "cnn1", "a": "vit",
           "b": "cnn2", "expect": "less"}


def transfer_record(fs, fa, fb) -> dict:
    fooled = {"cnn1": {"cnn1": fs, "vit": fa, "cnn2": fb}}
    return {"kind": "transfer", "attack": "pgd", "teacher_matrix": {"models": ["cnn1", "vit", "cnn2"], "fooled": fooled}}


def test_transfer_claim_is_a_paired_rate_difference_with_mcnemar():
    rng = np.random.default_rng(0)
    fs = (rng.random(300) < 0.6).astype(float)
    fa = (fs * (rng.random(300) < 0.2)).astype(float)   # ~20% of the source's examples fool the ViT
    fb = (fs * (rng.random(300) < 0.6)).astype(float)   # ~60% fool the other CNN
    (row,) = claims_table([T_CLAIM], {}, transfer_record(fs.tolist(), fa.tolist(), fb.tolist()))
    rate = lambda f: (fs * f).sum() / fs.sum()  # noqa: E731
    assert row["effect"] == pytest.approx(rate(fa) - rate(fb), abs=1e-12)
    assert row["ci"][0] <= row["effect"] <= row["ci"][1] < 0 and row["verdict"] == "reproduced"
    hit = fs == 1
    wins, losses = int((hit & (fa == 1) & (fb == 0)).sum()), int((hit & (fa == 0) & (fb == 1)).sum())
    assert row["p_value"] == pytest.approx(binomtest(wins, wins + losses, 0.5).pvalue, rel=1e-12)
    (flipped,) = claims_table([{**T_CLAIM, "a": "cnn2", "b": "vit"}], {}, transfer_record(fs.tolist(), fa.tolist(),
                                                                                        fb.tolist()))
    assert flipped["verdict"] == "contradicted"
    half = [0.5] * 300  # a randomized model: expected fractions, no exact test
    (row,) = claims_table([T_CLAIM], {}, transfer_record(fs.tolist(), half, half))
    assert row["p_value"] is None and row["verdict"] == "not shown"
    with pytest.raises(DarhtError, match="needs a transfer record with per-example outcomes"):
        claims_table([T_CLAIM], {}, {"kind": "transfer", "teacher_matrix": {"matrix": {}}})
    with pytest.raises(DarhtError, match="'vit' is not in the transfer matrix"):
        claims_table([T_CLAIM], {}, {"teacher_matrix": {"fooled": {"cnn1": {"cnn1": [1.0], "cnn2": [0.0]}}}})


def test_transfer_matrix_records_outcomes_that_give_its_rates():
    import torch

    from darht.evaluation.transfer import transfer_matrix
    from darht.models import create_model

    torch.manual_seed(0)
    models = {k: create_model("small-cnn", 4, 1, 12, width=4).eval() for k in ("a", "b")}
    x = torch.rand(64, 1, 12, 12)
    with torch.no_grad():
        y = models["a"](x).argmax(1)  # so that model a is right on every example
    m = transfer_matrix(models, x, y, attack="fgsm", eps=0.3, n=None)
    for src in ("a", "b"):
        fs, ft = np.array(m["fooled"][src][src]), np.array(m["fooled"][src]["b" if src == "a" else "a"])
        assert len(fs) == m["examples"] and fs.sum() == m["fooled_self"][src]
        if fs.sum():
            assert m["matrix"][src]["b" if src == "a" else "a"] == pytest.approx((fs * ft).sum() / fs.sum())
