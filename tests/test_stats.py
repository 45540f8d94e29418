"""`darht compare` statistics: paired tests, Mann-Whitney, Welch across seeds, refusals, reading records.

Every statistic is checked against scipy (or a formula) applied here, independently, to the same
synthetic per-example arrays.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest, mannwhitneyu, t as student_t, ttest_ind

from darht.errors import DarhtError
from darht.evaluation import stats
from darht.evaluation.comparable import check_comparable, common_attacks, parse_record_args, read_record
from darht.evaluation.stats import OVERLAP_NOTE, bootstrap_diff, compare, compare_groups, mcnemar
from darht.report.comparison import comparison_markdown

ATTACKS = ["fgsm", "pgd"]


def make_record(seed: int = 0, n: int = 400, *, p_clean: float = 0.8, p_robust: float = 0.7, draws: int = 1,
                trials: int = 4, shuffle: bool = False, index: list[int] | None = None) -> dict:
    """A record in `darht evaluate`'s format, built from random per-example results.

    draws = 1: a deterministic model (0/1 results, strict = robust); draws > 1: fractions of correct
    draws with strict = all draws correct. Trials are disjoint slices of the examples.
    """
    rng = np.random.default_rng(seed)
    index = list(range(n)) if index is None else list(index)
    n = len(index)
    clean = rng.binomial(draws, p_clean, n) / draws
    robust = {a: np.minimum(clean, rng.binomial(draws, p_robust, n) / draws) for a in ATTACKS}
    robust["worst"] = np.min([robust[a] for a in ATTACKS], axis=0)
    positions = [list(range(t, n, trials)) for t in range(trials)]

    def mean(x, pos):
        return float(np.mean(x[pos]))

    trial_rows = [{"clean": mean(clean, p), "robust": {a: mean(r, p) for a, r in robust.items()},
                   "w_robust": {a: mean((clean + r) / 2, p) for a, r in robust.items()}} for p in positions]

    def summary(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    rec = {
        "kind": "evaluation", "data": {"name": "fashion-mnist", "split": "test", "size": 10000},
        "eps": 0.0314, "attacks": list(ATTACKS),
        "attack_args": {"fgsm": {}, "pgd": {"steps": 10, "step_size": 0.00784}},
        "eot": 20 if draws > 1 else 1, "draws": draws, "randomized": draws > 1, "trials": trial_rows,
        "summary": {"clean": summary([t["clean"] for t in trial_rows]),
                    "robust": {a: summary([t["robust"][a] for t in trial_rows]) for a in robust},
                    "w_robust": {a: summary([t["w_robust"][a] for t in trial_rows]) for a in robust}},
        "trial_positions": positions, "trials_disjoint": True,
        "examples": {"index": index, "clean": clean.tolist(), "clean_strict": (clean == 1).astype(int).tolist(),
                     "robust": {a: r.tolist() for a, r in robust.items()},
                     "strict": {a: (r == 1).astype(int).tolist() for a, r in robust.items()}},
    }
    return shuffled(rec, seed + 1000) if shuffle else rec


def shuffled(rec: dict, seed: int) -> dict:
    """The same record with its examples stored in another order (trial positions remapped)."""
    rec = copy.deepcopy(rec)
    ex = rec["examples"]
    perm = np.random.default_rng(seed).permutation(len(ex["index"]))     # new position j holds old perm[j]
    new_pos = np.argsort(perm)

    def reorder(values):
        return [values[i] for i in perm]

    for key in ("index", "clean", "clean_strict"):
        ex[key] = reorder(ex[key])
    for key in ("robust", "strict"):
        ex[key] = {a: reorder(v) for a, v in ex[key].items()}
    rec["trial_positions"] = [sorted(int(new_pos[p]) for p in pos) for pos in rec["trial_positions"]]
    return rec


def old_record(values: list[float]) -> dict:
    """A record written before per-example results: trials and summary only."""
    return {"kind": "evaluation", "data": {"name": "fashion-mnist", "split": "test", "size": 10000},
            "eps": 0.0314, "attacks": ["pgd"], "attack_args": {"pgd": {"steps": 10}},
            "trials": [{"w_robust": {"pgd": v}} for v in values],
            "summary": {"w_robust": {"pgd": {"mean": float(np.mean(values)), "std": float(np.std(values))}}}}


def by_index(rec: dict, key: str, attack: str) -> dict[int, float]:
    ex = rec["examples"]
    return dict(zip(ex["index"], ex[key][attack]))


def w_by_index(rec: dict, attack: str) -> dict[int, float]:
    ex = rec["examples"]
    return {i: (c + r) / 2 for i, c, r in zip(ex["index"], ex["clean"], ex["robust"][attack])}


def write(path, rec) -> str:
    path.write_text(json.dumps(rec))
    return str(path)


# ------------------------------------------------------------------------------ McNemar
@pytest.mark.parametrize("draws", [1, 8])
@pytest.mark.parametrize("attack", ["pgd", "worst"])
def test_mcnemar_is_binomtest_on_discordant_pairs_aligned_by_index(draws, attack):
    a = make_record(0, draws=draws)
    b_sorted = make_record(1, draws=draws, p_robust=0.6)
    b = shuffled(b_sorted, 7)
    sa, sb = by_index(a, "strict", attack), by_index(b, "strict", attack)
    only_a = sum(1 for i in sa if sa[i] == 1 and sb[i] == 0)
    only_b = sum(1 for i in sa if sb[i] == 1 and sa[i] == 0)
    r = mcnemar(a, b, attack)
    assert (r["b"], r["c"], r["n"]) == (only_a, only_b, 400)
    assert r["p_value"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-12)
    assert mcnemar(a, b_sorted, attack) == r


def test_mcnemar_uses_the_strict_verdict_for_randomized_models():
    a, b = make_record(0, draws=8), make_record(1, draws=8)
    assert a["examples"]["strict"]["pgd"] != a["examples"]["robust"]["pgd"]   # fractions, not 0/1
    sa, sb = np.array(a["examples"]["strict"]["pgd"]), np.array(b["examples"]["strict"]["pgd"])
    r = mcnemar(a, b, "pgd")
    assert (r["b"], r["c"]) == (int(np.sum((sa == 1) & (sb == 0))), int(np.sum((sb == 1) & (sa == 0))))


def test_mcnemar_without_discordant_pairs_is_p_one():
    a = make_record(0)
    r = mcnemar(a, shuffled(a, 3), "pgd")
    assert (r["b"], r["c"], r["p_value"]) == (0, 0, 1.0)


# ------------------------------------------------------------------------------ bootstrap
def test_bootstrap_contains_observed_diff_and_is_seeded():
    a, b = make_record(0), make_record(1, p_robust=0.6, shuffle=True)
    wa, wb = w_by_index(a, "pgd"), w_by_index(b, "pgd")
    observed = np.mean([wa[i] - wb[i] for i in wa])
    r = bootstrap_diff(a, b, "pgd", resamples=2000, seed=5)
    assert r["diff"] == pytest.approx(observed, abs=1e-12)
    assert r["ci"][0] < observed < r["ci"][1]
    assert bootstrap_diff(a, b, "pgd", resamples=2000, seed=5) == r
    assert bootstrap_diff(a, b, "pgd", resamples=2000, seed=6)["ci"] != r["ci"]
    # alignment by index: the storage order of B's examples changes nothing, not even the resamples
    unshuffled = make_record(1, p_robust=0.6)
    assert bootstrap_diff(a, unshuffled, "pgd", resamples=2000, seed=5) == r


def test_bootstrap_ci_shrinks_with_more_examples():
    def width(n):
        ci = bootstrap_diff(make_record(0, n=n), make_record(1, n=n, p_robust=0.6), "pgd", resamples=2000)["ci"]
        return ci[1] - ci[0]

    small, large = width(200), width(5000)
    # the standard error scales as 1/sqrt(n): 25x the examples, about 1/5 the width
    assert large < small / 3


def test_bootstrap_of_identical_records_is_zero():
    a = make_record(0)
    r = bootstrap_diff(a, shuffled(a, 1), "worst")
    assert r["diff"] == 0 and r["ci"] == [0.0, 0.0] and r["resamples"] == 10000 and r["seed"] == 0


def test_bootstrap_chunks_bound_memory(monkeypatch):
    # chunks of 1 resample row at a time give a valid interval (the chunking loop covers all rows)
    monkeypatch.setattr(stats, "_CHUNK_DRAWS", 1)
    r = bootstrap_diff(make_record(0, n=50), make_record(1, n=50), "pgd", resamples=37)
    assert r["resamples"] == 37 and r["ci"][0] <= r["ci"][1]


# ------------------------------------------------------------------------------ Mann-Whitney
def test_compare_gives_scipys_mann_whitney_on_per_trial_w_robust():
    a, b = old_record([0.5, 0.52, 0.55, 0.51, 0.49]), old_record([0.45, 0.47, 0.46, 0.5, 0.44])
    expected = mannwhitneyu([0.5, 0.52, 0.55, 0.51, 0.49], [0.45, 0.47, 0.46, 0.5, 0.44], alternative="two-sided")
    r = compare(a, b, "pgd")
    assert r["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert r["u"] == pytest.approx(expected.statistic)
    assert (r["n_a"], r["n_b"]) == (5, 5) and r["mean_a"] == pytest.approx(0.514)


def test_pair_row_mann_whitney_and_overlap_note():
    a, b = make_record(0, trials=6), make_record(1, trials=6, p_robust=0.6)
    per_trial = [[t["w_robust"]["pgd"] for t in r["trials"]] for r in (a, b)]
    expected = mannwhitneyu(*per_trial, alternative="two-sided")
    result = compare_groups({"A": [("a.json", a)], "B": [("b.json", b)]}, ["pgd"])
    row = result["pairs"][0]
    assert row["mann_whitney"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert row["mann_whitney"]["u"] == pytest.approx(expected.statistic)
    assert not row["trials_overlap"] and OVERLAP_NOTE not in row["notes"]
    for flag in (False, None):
        b2 = copy.deepcopy(b)
        if flag is None:
            del b2["trials_disjoint"]
        else:
            b2["trials_disjoint"] = flag
        row = compare_groups({"A": [("a.json", a)], "B": [("b.json", b2)]}, ["pgd"])["pairs"][0]
        assert row["trials_overlap"] and OVERLAP_NOTE in row["notes"]
        assert OVERLAP_NOTE in comparison_markdown({"baseline": "A", "pairs": [{"group_a": "A", "group_b": "B",
                                                                                **row}], "seeds": []})


# ------------------------------------------------------------------------------ across seeds
def test_welch_across_seeds_matches_scipy_and_formula():
    base = [(f"a{i}.json", make_record(i, p_robust=0.70)) for i in range(3)]
    other = [(f"b{i}.json", make_record(10 + i, p_robust=0.62)) for i in range(4)]
    result = compare_groups({"A": base, "B": other}, ["pgd"], resamples=200)
    # different group sizes: every record pair
    assert len(result["pairs"]) == 12
    xa = [np.mean(list(w_by_index(r, "pgd").values())) for _, r in base]
    xb = [np.mean(list(w_by_index(r, "pgd").values())) for _, r in other]
    expected = ttest_ind(xa, xb, equal_var=False)
    (row,) = result["seeds"]
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-10)
    assert row["t"] == pytest.approx(expected.statistic, rel=1e-10)
    va, vb = np.var(xa, ddof=1) / 3, np.var(xb, ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    diff = np.mean(xa) - np.mean(xb)
    half = student_t.ppf(0.975, df) * math.sqrt(va + vb)
    assert row["df"] == pytest.approx(df, rel=1e-10)
    assert row["diff"] == pytest.approx(diff, abs=1e-12)
    assert row["ci"] == pytest.approx([diff - half, diff + half], rel=1e-10)
    assert (row["n_a"], row["n_b"]) == (3, 4)


def test_equal_group_sizes_pair_seed_i_with_seed_i():
    base = [(f"a{i}.json", make_record(i)) for i in range(3)]
    other = [(f"b{i}.json", make_record(10 + i)) for i in range(3)]
    result = compare_groups({"A": base, "B": other}, ["pgd"], resamples=100)
    assert [(r["a"], r["b"]) for r in result["pairs"]] == [("a0.json", "b0.json"), ("a1.json", "b1.json"),
                                                            ("a2.json", "b2.json")]


def test_welch_uses_summary_mean_for_old_records():
    base = [("a0", old_record([0.5, 0.52, 0.55])), ("a1", old_record([0.53, 0.5, 0.51]))]
    other = [("b0", old_record([0.45, 0.47, 0.46])), ("b1", old_record([0.44, 0.48, 0.43]))]
    (row,) = compare_groups({"A": base, "B": other})["seeds"]
    xa = [r["summary"]["w_robust"]["pgd"]["mean"] for _, r in base]
    xb = [r["summary"]["w_robust"]["pgd"]["mean"] for _, r in other]
    assert row["p_value"] == pytest.approx(ttest_ind(xa, xb, equal_var=False).pvalue, rel=1e-10)


def test_welch_without_spread_is_undefined_not_nan():
    a, b = make_record(0), make_record(1)
    result = compare_groups({"A": [("a0", a), ("a1", a)], "B": [("b0", b), ("b1", b)]}, ["pgd"], resamples=50)
    (row,) = result["seeds"]
    assert row["p_value"] is None and row["ci"][0] == row["ci"][1] and row["notes"]
    json.dumps(result, allow_nan=False)


# ------------------------------------------------------------------------------ the whole result
def test_compare_groups_result_is_json_and_markdown():
    base = [(f"a{i}.json", make_record(i)) for i in range(2)]
    other = [(f"b{i}.json", make_record(10 + i, p_robust=0.6, shuffle=True)) for i in range(2)]
    result = compare_groups({"A": base, "B": other}, resamples=200)
    assert result["attacks"] == ["fgsm", "pgd", "worst"]
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert {"bootstrap", "mcnemar", "mann_whitney", "w_robust_a", "w_robust_b", "notes"} <= set(result["pairs"][0])
    md = comparison_markdown(result)
    assert "## Record pairs" in md and "## Across seeds" in md and "McNemar p" in md and "Welch p" in md
    row = result["pairs"][-1]
    assert f"| A: a1.json | B: b1.json | worst | {100 * row['w_robust_a']:.2f} |" in md


def test_default_attacks_include_worst_even_if_not_in_summary():
    a, b = make_record(0), make_record(1)
    for r in (a, b):
        del r["summary"]["w_robust"]["worst"]
    assert common_attacks([a, b]) == ["fgsm", "pgd", "worst"]
    with pytest.raises(DarhtError, match="a.json has no attack 'cw'"):
        compare_groups({"A": [("a.json", a)], "B": [("b.json", b)]}, ["cw"])


# ------------------------------------------------------------------------------ refusals
def _set(path: str, value):
    def change(rec):
        keys = path.split(".")
        target = rec
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


@pytest.mark.parametrize("field, change", [
    ("eps", _set("eps", 0.0315)),
    ("attacks", _set("attacks", ["pgd"])),
    ("attack_args.pgd.steps", _set("attack_args.pgd.steps", 20)),
    ("eot", _set("eot", 5)),
    ("draws", _set("draws", 4)),
    ("data.name", _set("data.name", "mnist")),
    ("data.split", _set("data.split", "train")),
    ("examples.index", _set("examples.index", list(range(1, 401)))),
])
def test_mismatched_records_are_refused_naming_the_field(field, change):
    draws = 20 if field in ("eot", "draws") else 1  # EOT and draws are compared between randomized records
    a, b = make_record(0, draws=draws), make_record(1, draws=draws)
    change(b)
    with pytest.raises(DarhtError) as e:
        check_comparable(a, b, "a.json", "b.json")
    msg = str(e.value)
    assert field in msg and "a.json" in msg and "b.json" in msg and "\n" not in msg
    with pytest.raises(DarhtError, match=field.replace(".", r"\.")):
        compare_groups({"A": [("a.json", a)], "B": [("b.json", b)]})


def test_a_deterministic_baseline_compares_with_a_randomized_student():
    """Each is judged by its own rule (1 prediction vs 20 draws, EOT 1 vs 20): same protocol."""
    a, b = make_record(0), make_record(1, draws=20)
    b["attack_args"]["pgd"]["eot"] = 20
    check_comparable(a, b, "a.json", "b.json")
    b["attacks"] = b["attacks"] + ["apgd-dlr"]  # the randomized default adds APGD-DLR
    check_comparable(a, b, "a.json", "b.json", ["pgd"])
    with pytest.raises(DarhtError, match="attacks differs"):  # `worst` is over different attack lists
        check_comparable(a, b, "a.json", "b.json", ["worst"])


def test_comparable_within_tolerance_and_in_any_order():
    a, b = make_record(0), shuffled(make_record(1), 2)
    b["eps"] = 0.0314 * (1 + 1e-13)
    b["attacks"] = ["pgd", "fgsm"]
    check_comparable(a, b, "a.json", "b.json")


def test_missing_setting_in_one_record_is_a_difference():
    a, b = make_record(0, draws=20), make_record(1, draws=20)
    del b["eot"]
    with pytest.raises(DarhtError, match="eot differs .*not recorded"):
        check_comparable(a, b, "a.json", "b.json")


def test_old_records_mann_whitney_works_paired_tests_refused():
    a, b = old_record([0.5, 0.52, 0.55, 0.51]), old_record([0.45, 0.47, 0.46, 0.5])
    result = compare_groups({"A": [("a.json", a)], "B": [("b.json", b)]})
    (row,) = result["pairs"]
    expected = mannwhitneyu([0.5, 0.52, 0.55, 0.51], [0.45, 0.47, 0.46, 0.5], alternative="two-sided")
    assert row["mann_whitney"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert row["bootstrap"] is None and row["mcnemar"] is None
    assert "a.json has no per-example results; re-run darht evaluate (paired tests skipped)" in row["notes"]
    assert OVERLAP_NOTE in row["notes"]
    assert "n/a" in comparison_markdown(result)
    for test in (mcnemar, bootstrap_diff):
        with pytest.raises(DarhtError, match="^old.json has no per-example results; re-run darht evaluate$"):
            test(a, b, "pgd", "old.json", "b.json")


def test_nothing_testable_is_refused():
    a, b = old_record([0.5]), old_record([0.45])
    with pytest.raises(DarhtError, match="no per-example results"):
        compare_groups({"A": [("a.json", a)], "B": [("b.json", b)]})


# ------------------------------------------------------------------------------ reading records
def test_read_record_errors_name_the_file(tmp_path):
    bad = {"dir": tmp_path / "adir", "bytes": tmp_path / "bytes.json", "list": tmp_path / "list.json",
           "fields": tmp_path / "fields.json", "json": tmp_path / "broken.json", "kind": tmp_path / "cmp.json"}
    bad["dir"].mkdir()
    bad["bytes"].write_bytes(b"\xff\xfe{\x00")
    bad["list"].write_text("[1, 2]")
    bad["fields"].write_text(json.dumps({"kind": "evaluation", "trials": []}))
    bad["json"].write_text("{")
    bad["kind"].write_text(json.dumps({"kind": "comparison", "pairs": []}))
    expect = {"dir": "is a directory", "bytes": "not UTF-8", "list": "holds an array", "fields": "no 'summary'",
              "json": "not valid JSON", "kind": "'comparison' record"}
    for key, path in bad.items():
        with pytest.raises(DarhtError) as e:
            read_record(path)
        assert str(path) in str(e.value) and expect[key] in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DarhtError, match="record not found"):
        read_record(tmp_path / "nope.json")


def test_parse_record_args_groups(tmp_path):
    paths = [write(tmp_path / f"r{i}.json", make_record(i, n=40)) for i in range(4)]
    groups = parse_record_args([f"base={paths[0]}", paths[2], f"base={paths[1]}", f"new={paths[3]}"])
    assert list(groups) == ["base", paths[2], "new"]
    assert [p for p, _ in groups["base"]] == [paths[0], paths[1]]
    assert groups["new"][0][1]["examples"]["index"] == list(range(40))
    for items in ([paths[0]], [f"m={paths[0]}", f"m={paths[1]}"]):
        with pytest.raises(DarhtError, match=r"compare needs at least two methods \(records or NAME=PATH groups\)"):
            parse_record_args(items)
    with pytest.raises(DarhtError, match="expected PATH or NAME=PATH"):
        parse_record_args([f"={paths[0]}", paths[1]])
    # a path containing '=' is still a path
    odd = write(tmp_path / "eps=0.03.json", make_record(9, n=40))
    assert odd in parse_record_args([odd, paths[0]])


# ------------------------------------------------------------------------------ the CLI
def test_cli_compare_groups(tmp_path, capsys):
    from darht import cli

    paths = [write(tmp_path / f"r{i}.json", make_record(i, n=60)) for i in range(4)]
    out = tmp_path / "cmp.json"
    assert cli.main(["compare", f"a={paths[0]}", f"a={paths[1]}", f"b={paths[2]}", f"b={paths[3]}",
                     "--attack", "pgd", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["kind"] == "comparison" and len(rec["pairs"]) == 2 and len(rec["seeds"]) == 1
    assert f"{rec['seeds'][0]['p_value']:.3g}" in printed


def test_cli_compare_refuses_mismatched_records_in_one_line(tmp_path, capsys):
    from darht import cli

    a, b = make_record(0, n=60), make_record(1, n=60)
    b["eps"] = 0.05
    pa, pb = write(tmp_path / "a.json", a), write(tmp_path / "b.json", b)
    out = tmp_path / "cmp.json"
    assert cli.main(["compare", pa, pb, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("darht: error:") and "eps differs" in err[0]
    assert not out.exists()


def test_cli_compare_mcnemar_equals_binomtest(tmp_path, capsys):
    from darht import cli

    a, b = make_record(3, n=200), make_record(4, n=200)
    pa, pb = write(tmp_path / "a.json", a), write(tmp_path / "b.json", b)
    out = tmp_path / "cmp.json"
    assert cli.main(["compare", pa, pb, "--attack", "pgd", "--out", str(out)]) == 0
    ra, rb = np.array(a["examples"]["strict"]["pgd"]), np.array(b["examples"]["strict"]["pgd"])
    bb, cc = int(((ra == 1) & (rb == 0)).sum()), int(((ra == 0) & (rb == 1)).sum())
    expected = binomtest(bb, bb + cc, 0.5).pvalue
    row = json.loads(out.read_text())["pairs"][0]
    assert row["mcnemar"]["p_value"] == pytest.approx(expected, rel=1e-12)


def test_sign_flip_p_is_scipys_exact_paired_permutation_test_on_small_samples():
    from scipy.stats import permutation_test

    from darht.evaluation.stats import sign_flip_p

    rng = np.random.default_rng(3)
    for n in (2, 5, 9, 12):
        d = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 0.35], size=n)
        ref = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=10**6).pvalue  # exact: 2^n
        assert sign_flip_p(d) == pytest.approx(min(1.0, ref), abs=1e-12)
    assert sign_flip_p(np.zeros(50)) == 1.0
    d = rng.normal(0.05, 0.3, size=400)
    ref = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=50_000, random_state=1).pvalue
    assert sign_flip_p(d, resamples=50_000) == pytest.approx(ref, abs=0.01)
    assert sign_flip_p(d, seed=4) == sign_flip_p(d, seed=4)


def test_compare_shows_the_sign_flip_p_of_the_w_robust_difference():
    from darht.evaluation.stats import compare_pair, sign_flip_p

    a, b = make_record(0, draws=20, p_robust=0.7), make_record(1, draws=20, p_robust=0.66)
    row = compare_pair(a, b, "pgd", "a", "b")
    wa, wb = w_by_index(a, "pgd"), w_by_index(b, "pgd")
    assert row["permutation"]["p_value"] == sign_flip_p(np.array([wa[i] - wb[i] for i in wa]))
    assert f"| {row['permutation']['p_value']:.3g} |" in comparison_markdown(
        {"baseline": "a", "pairs": [{**row, "group_a": "a", "group_b": "b"}], "seeds": []})
