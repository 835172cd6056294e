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
