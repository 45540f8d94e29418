"""Plots (matplotlib, PNG) made only from stored records: per-epoch curves (paper Fig. 3, 4, 6),
W-Robust distributions over trials (Fig. 5) and the transferability heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from darht.report.tables import seed_group  # noqa: E402  (re-exported: the plots' grouping)
from darht.utils import atomic_write  # noqa: E402


def epoch_curves(runs: dict[str, list[dict]], path: str | Path) -> Path | None:
    """Validation clean accuracy and W-Robust (PGD, held-out split) per epoch: one line per run,
    or for runs repeated over training seeds (NAME-s<k>) their mean with the min-max band."""
    runs = {k: [m for m in v if m.get("val_clean") is not None] for k, v in runs.items()}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    groups: dict[str, list[list[dict]]] = {}
    for name, ms in runs.items():
        groups.setdefault(seed_group(name), []).append(ms)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, members in groups.items():
        epochs = sorted(set.intersection(*[{m["epoch"] for m in ms} for ms in members]))
        if not epochs:
            continue
        label = name if len(members) == 1 else f"{name} ({len(members)} seeds)"
        for ax, value in ((axes[0], lambda m: m["val_clean"]),
                          (axes[1], lambda m: (m["val_clean"] + m["val_robust"]) / 2)):
            per_seed = [{m["epoch"]: 100 * value(m) for m in ms} for ms in members]
            mean = [sum(s[e] for s in per_seed) / len(per_seed) for e in epochs]
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
            if len(members) > 1:
                ax.fill_between(epochs, [min(s[e] for s in per_seed) for e in epochs],
                                [max(s[e] for s in per_seed) for e in epochs], color=line.get_color(), alpha=0.2)
    axes[0].set(title="clean accuracy (validation)", xlabel="epoch", ylabel="%")
    axes[1].set(title="W-Robust, PGD (validation; bands: min-max over seeds)", xlabel="epoch", ylabel="%")
    axes[1].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def w_robust_distributions(records: dict[str, dict], path: str | Path) -> Path | None:
    """Box plots of per-trial W-Robust per attack and model (paper Fig. 5; needs records with
    several trials); the records of one model's training seeds (NAME-s<k>) are pooled in one box, and
    a DARHT student's deterministic face has a box of its own (NAME@det)."""
    attacks = sorted({a for r in records.values() if r.get("trials_count", 1) > 1 for a in r["summary"]["w_robust"]})
    if not attacks:
        return None
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 4), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        groups: dict[str, list[float]] = {}
        for n, r in records.items():
            det = (r.get("faces") or {}).get("deterministic")  # a DARHT student with dropout off: its own box
            for name, face in ((seed_group(n), r), (seed_group(n) + "@det", det)):
                if face and attack in face["summary"]["w_robust"]:
                    groups.setdefault(name, []).extend(100 * t["w_robust"][attack] for t in face["trials"])
        ax.boxplot(list(groups.values()))
        ax.set_xticks(range(1, len(groups) + 1), list(groups), rotation=30, fontsize=8)
        ax.set(title=f"W-Robust over trials: {attack}", ylabel="%")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def transfer_heatmap(matrix_record: dict, path: str | Path) -> Path | None:
    names = matrix_record.get("models") or []
    if not names:
        return None
    m = matrix_record["matrix"]
    values = [[float("nan") if m[s][t] is None else 100 * m[s][t] for t in names] for s in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
    im = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if v != v else f"{v:.0f}", ha="center", va="center", color="w", fontsize=8)
    ax.set(title="transfer rate (%): crafted on row, evaluated on column")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)
