"""Figures and tables the notebooks show; each returns its figure so papermill output keeps it."""

from __future__ import annotations

from collections.abc import Sequence


def table(rows: Sequence[dict], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A plain-text table of `rows` (dicts) restricted to `columns`; printed, it reads well everywhere."""
    def cell(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def loss_curves(curves: dict[str, Sequence[float]], title: str = "Training loss"):
    """One line per run: loss against optimizer step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, marker="o", ms=3, label=name)
    ax.set(xlabel="optimizer step", ylabel="loss", title=title, yscale="log")
    ax.legend()
    fig.tight_layout()
    return fig


def throughput_bars(rows: Sequence[dict]):
    """Real tokens/s per batch layout, with the padding bound 1/(1 - padding fraction) as a marker."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["layout"] for r in rows]
    speeds = [r["real_tokens_per_s"] for r in rows]
    bars = ax.bar(names, speeds, color=["#999999", "#4c72b0", "#55a868"][: len(rows)])
    bound = rows[0]["real_tokens_per_s"] / (1 - rows[0]["padding_fraction"])
    ax.axhline(bound, ls="--", color="k", lw=1, label="padded x 1/(1 - padding fraction)")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"pad {r['padding_fraction']:.0%}",
                ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="real (non-padding) tokens / s", title="Same fine-tune, three batch layouts")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def probe_bars(results: dict[str, dict]):
    """General-probe accuracy and perplexity per model: forgetting made visible."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    names = list(results)
    a1.bar(names, [results[n]["probe_accuracy"] for n in names], color="#4c72b0")
    a1.axhline(0.25, ls=":", color="k", lw=1, label="chance (4 choices)")
    a1.set(ylim=(0, 1), ylabel="accuracy", title="General probe: multiple choice")
    a1.legend(fontsize=8)
    a2.bar(names, [results[n]["probe_perplexity"] for n in names], color="#c44e52")
    a2.set(ylabel="perplexity (log scale)", yscale="log", title="General text perplexity")
    for ax in (a1, a2):
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    return fig


def quality_vs_cost(rows: Sequence[dict]):
    """Exact match against prompt tokens per query (left) and one-off training seconds (right), per approach."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 3.2))
    colors = ["#999999", "#4c72b0", "#55a868", "#c44e52"]
    for row, color in zip(rows, colors):
        a1.scatter(row["prompt_tokens_per_query"], row["exact_match"], s=60, color=color, label=row["approach"])
        a2.scatter(row["training_seconds"], row["exact_match"], s=60, color=color)
    a1.set(xlabel="prompt tokens per query", ylabel="exact match", ylim=(-0.05, 1.05), title="Quality vs cost per query")
    a2.set(xlabel="one-off training seconds", ylim=(-0.05, 1.05), title="Quality vs cost up front")
    a1.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return fig


def memory_bars(rows: Sequence[dict]):
    """Stacked bars of training memory per method: the estimate beside the measurement."""
    import matplotlib.pyplot as plt

    parts = ["parameters", "gradients", "optimizer_states", "activations"]
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for m, method in enumerate(methods):
        for k, source in enumerate(("estimate_gb", "measured_gb")):
            x, bottom = m * 3 + k, 0.0
            for part, color in zip(parts, colors):
                value = next(r[source] for r in rows if r["method"] == method and r["part"] == part)
                ax.bar(x, value, bottom=bottom, color=color, hatch="" if k else "//", edgecolor="white",
                       label=part if m == 0 and k == 1 else None)
                bottom += value
    ax.set_xticks([m * 3 + k for m in range(len(methods)) for k in (0, 1)],
                  [f"{method}\n{label}" for method in methods for label in ("estimate", "measured")], fontsize=8)
    ax.set(ylabel="GB", title="Training memory of one step: estimate (hatched) vs measured")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_plot(lines: dict[str, Sequence[dict]], bars: Sequence[dict] = ()):
    """LoRA ablation: exact match against rank for each family of runs (`lines`: label -> rows, seconds per
    step of the first family dashed), the target-module runs as bars (`bars`), and every run's loss curve."""
    import matplotlib.pyplot as plt

    panels = 3 if bars else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    left, right = axes[0], axes[-1]
    for label, group in lines.items():
        group = sorted(group, key=lambda r: r["r"])
        left.plot([r["r"] for r in group], [r["exact_match"] for r in group], marker="o", label=label)
    main = sorted(next(iter(lines.values())), key=lambda r: r["r"])
    everything = [r for group in lines.values() for r in group] + list(bars)
    twin = left.twinx()
    twin.plot([r["r"] for r in main], [r["seconds_per_step"] for r in main], color="grey", linestyle="--",
              marker="x", label="seconds / step")
    twin.set_ylabel("seconds per step (first family)", color="grey")
    twin.set_ylim(0, max(r["seconds_per_step"] for r in everything) * 1.3)
    ranks = sorted({r["r"] for group in lines.values() for r in group})
    left.set(xscale="log", xlabel="rank r", ylabel="validation exact match", ylim=(-0.02, 1.02),
             title="Quality against rank")
    left.set_xticks(ranks, [str(r) for r in ranks])
    left.legend(fontsize=7, loc="upper left")
    if bars:
        middle = axes[1]
        names = [r["target_group"] for r in bars]
        middle.bar(range(len(bars)), [r["exact_match"] for r in bars], color="#4c72b0")
        for k, r in enumerate(bars):
            middle.annotate(f"{r['trainable'] / 1e6:.2f}M trained", (k, r["exact_match"]), ha="center",
                            va="bottom", fontsize=7)
        middle.set_xticks(range(len(bars)), names, fontsize=8)
        middle.set(ylabel="validation exact match", ylim=(0, 1.05), title=f"Target modules at r={bars[0]['r']}")
    seen = set()
    for r in everything:
        if r["run"] in seen:
            continue
        seen.add(r["run"])
        right.plot(range(1, len(r["losses"]) + 1), r["losses"], label=r["run"])
    right.set(xlabel="step", ylabel="training loss", yscale="log", title="Loss curves")
    right.legend(fontsize=6)
    fig.tight_layout()
    return fig


def leakage_plot(leaky: dict, clean: dict):
    """Each test item's answer loss under the clean model (x) and the leaky one (y), leaked items in red:
    below the diagonal, the leaky model finds the right answer more likely."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for part, color in (("unseen", "#999999"), ("leaked", "#c44e52")):
        ax.scatter(clean[part]["losses"], leaky[part]["losses"], s=18, color=color, label=f"{part} test items")
    values = [v for model in (leaky, clean) for part in ("leaked", "unseen") for v in model[part]["losses"]]
    low, high = min(values) / 1.5, max(values) * 1.5
    ax.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--")
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), xlabel="answer loss, clean model",
           ylabel="answer loss, leaky model", title="Per item: below the line, leakage helped")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def data_size_curves(runs: dict[str, dict]):
    """Training (dashed) and validation (solid) loss against optimizer step, one colour per run; `runs` maps a label
    to {"train": [(step, loss), ...], "validation": [(step, loss), ...]}."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for (label, run), color in zip(runs.items(), ["#c44e52", "#4c72b0", "#55a868", "#8172b2"]):
        ax.plot(*zip(*run["train"]), color=color, linestyle="--", linewidth=1, label=f"{label}: training")
        ax.plot(*zip(*run["validation"]), color=color, marker="o", label=f"{label}: validation")
    ax.set(xlabel="optimizer step (the same batch size in every run)", ylabel="loss (log scale)", yscale="log",
           title="Same example-passes, different data: training vs validation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
