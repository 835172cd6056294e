"""The course's labs: ipywidgets over functions that tests call directly, each with a static figure.

A lab's numbers come from `*_numbers` functions; `*_figure` draws them for a headless run (papermill,
CI, a printed page); `*_widget` is a thin layer of sliders that recomputes the same numbers and figure.
"""

from __future__ import annotations

from collections.abc import Sequence

from .estimator import ALL_LINEAR, ModelShape, TrainingPlan, estimate_memory, lora_param_count

RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128)


def _figure_png(fig) -> bytes:
    """A figure as PNG bytes, closed afterwards (widgets show images; no Output capture, which hangs headless)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _pre(text: str) -> str:
    import html

    return f"<pre style='margin:0'>{html.escape(text)}</pre>"


def _error_html(error: BaseException) -> str:
    """An exception as the learner sees it in a lab: red, with its traceback (ipywidgets would swallow it)."""
    import html
    import traceback

    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return (f"<pre class='ftcourse-lab-error' style='margin:0;color:#b00020;white-space:pre-wrap'>"
            f"{html.escape(trace)}</pre>")


def _mark(box, name: str, readout, image, error):
    """CSS classes a browser test (and a learner's stylesheet) finds a lab's parts by."""
    box.add_class("ftcourse-lab")
    box.add_class(f"ftcourse-lab-{name}")
    readout.add_class("ftcourse-lab-readout")
    image.add_class("ftcourse-lab-figure")
    error.add_class("ftcourse-lab-errors")
    return box


def _shown(callback, errors):
    """`callback` for a widget's observe/on_click whose exceptions go to the `errors` HTML widget, not to nowhere.

    ipywidgets runs callbacks in the comm handler, which logs an exception out of the learner's sight; here it is
    shown under the controls, and cleared by the next call that succeeds.
    """
    import functools

    @functools.wraps(callback)
    def wrapped(*args, **kwargs):
        try:
            result = callback(*args, **kwargs)
        except Exception as error:  # shown to the learner, not swallowed
            errors.value = _error_html(error)
            return None
        errors.value = ""
        return result

    return wrapped


# ---------------------------------------------------------------- LoRA Lab (notebook 04)

def lora_lab_numbers(shape: ModelShape, r: int, alpha: float, targets: Sequence[str], batch_size: int, seq_len: int,
                     autocast_dtype: str | None, full_error_at_rank=None) -> dict:
    """Trainable parameters, their share, the scale alpha/r, the estimated training memory of LoRA vs full.

    `full_error_at_rank(r)`, when given, is the relative error of the best rank-r approximation of a
    full fine-tune's ΔW: how much of a full update a rank-r adapter could hold.
    """
    targets = tuple(t for t in ALL_LINEAR if t in targets)
    if not targets:
        raise ValueError(f"Choose at least one target module from {ALL_LINEAR}.")
    if r < 1 or alpha <= 0:
        raise ValueError(f"rank must be >= 1 and alpha > 0, got r={r}, alpha={alpha}.")
    plan = TrainingPlan(method="lora", batch_size=batch_size, seq_len=seq_len, autocast_dtype=autocast_dtype,
                        lora_r=r, lora_targets=targets)
    full = TrainingPlan(method="full", batch_size=batch_size, seq_len=seq_len, autocast_dtype=autocast_dtype)
    trainable = lora_param_count(shape, r, targets)
    numbers = {"r": r, "alpha": alpha, "scale": alpha / r, "targets": targets, "trainable": trainable,
               "trainable_share": trainable / (shape.n_params + trainable),  # as PEFT counts it
               "lora_memory_gb": estimate_memory(shape, plan).total / 1e9,
               "full_memory_gb": estimate_memory(shape, full).total / 1e9}
    if full_error_at_rank is not None:
        numbers["full_update_error_at_r"] = float(full_error_at_rank(r))
    return numbers


def lora_lab_text(numbers: dict) -> str:
    """The lab's readout, one line per quantity."""
    lines = [f"rank r = {numbers['r']}, alpha = {numbers['alpha']:g}  ->  scale alpha/r = {numbers['scale']:.3g}",
             f"targets: {', '.join(numbers['targets'])}",
             f"trainable parameters: {numbers['trainable']:,} ({numbers['trainable_share']:.2%} of the model)",
             f"estimated training memory: LoRA {numbers['lora_memory_gb']:.2f} GB vs full fine-tune "
             f"{numbers['full_memory_gb']:.2f} GB"]
    if "full_update_error_at_r" in numbers:
        error = numbers["full_update_error_at_r"]
        lines.append(f"a rank-{numbers['r']} approximation of the full fine-tune's update misses {error ** 2:.1%} "
                     f"of its energy (relative Frobenius error {error:.3f})")
    return "\n".join(lines)


def lora_lab_figure(spectra: dict, errors: dict, r: int | None = None, title: str = "", numbers: dict | None = None):
    """Left: singular values of each ΔW (normalised by the largest). Right: rank-k approximation error.

    `spectra` and `errors` map a label ("LoRA r=64", "full fine-tune") to `lora.spectrum` / `lora.low_rank_error`.
    With `numbers` (a `lora_lab_numbers` result, as the lab passes) a third panel shows that setting's estimated
    training memory against a full fine-tune, and the title its scale and targets: every control moves the figure.
    """
    import matplotlib.pyplot as plt

    if numbers is None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    else:
        fig, (left, right, memory) = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 0.55]})
        bars = memory.bar(["LoRA", "full"], [numbers["lora_memory_gb"], numbers["full_memory_gb"]],
                          color=["#1f77b4", "#ff7f0e"])
        memory.bar_label(bars, fmt="%.2f GB", fontsize=8)
        memory.set(ylabel="estimated training memory (GB)", ylim=(0, 1.2 * numbers["full_memory_gb"]),
                   title=f"{numbers['trainable']:,} trainable\n({numbers['trainable_share']:.2%} of the model)")
        memory.title.set_fontsize(9)
        title = title or (f"r = {numbers['r']}, alpha = {numbers['alpha']:g}: scale {numbers['scale']:.3g}; "
                          f"targets: {', '.join(numbers['targets'])}")
    for label, s in spectra.items():
        s = s.double()
        left.semilogy(range(1, len(s) + 1), (s / s[0]).clamp_min(1e-12).numpy(), label=label)
    left.set(xlabel="index i", ylabel="s_i / s_1", title="Singular values of ΔW", ylim=(1e-6, 2))
    for label, e in errors.items():
        right.plot(range(len(e)), e.numpy(), label=label)
    right.set(xlabel="rank k of the approximation", ylabel="||ΔW - ΔW_k|| / ||ΔW||", title="Best rank-k error",
              xscale="symlog", ylim=(0, 1.02))
    if r is not None:
        for ax in (left, right):
            ax.axvline(r, color="grey", linestyle=":", label=f"r = {r}")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def lora_lab_widget(shape: ModelShape, spectra: dict, errors: dict, full_label: str, batch_size: int, seq_len: int,
                    autocast_dtype: str | None, r: int = 16, alpha: float = 32):
    """Sliders for rank, alpha and target modules over `lora_lab_numbers` and `lora_lab_figure`."""
    import ipywidgets as widgets
    from IPython.display import display

    rank = widgets.SelectionSlider(options=list(RANK_CHOICES), value=r, description="rank r")
    alpha_slider = widgets.FloatLogSlider(value=alpha, base=2, min=0, max=9, step=1, description="alpha")
    boxes = {t: widgets.Checkbox(value=True, description=t, indent=False, layout=widgets.Layout(width="110px"))
             for t in ALL_LINEAR}
    text, image, shown_error = widgets.HTML(), widgets.Image(format="png"), widgets.HTML()
    error_of_full = errors[full_label]

    def redraw(*_):
        chosen = [t for t, box in boxes.items() if box.value]
        try:
            numbers = lora_lab_numbers(shape, rank.value, alpha_slider.value, chosen, batch_size, seq_len,
                                       autocast_dtype, lambda k: error_of_full[min(k, len(error_of_full) - 1)])
        except ValueError as error:
            text.value = _pre(str(error))
            return
        text.value = _pre(lora_lab_text(numbers))
        image.value = _figure_png(lora_lab_figure(spectra, errors, rank.value, numbers=numbers))

    redraw()  # the first draw raises as any cell would (papermill, CI); the controls' callbacks show theirs
    for control in (rank, alpha_slider, *boxes.values()):
        control.observe(_shown(redraw, shown_error), names="value")
    box = _mark(widgets.VBox([widgets.HBox([rank, alpha_slider]), widgets.HBox(list(boxes.values())), text,
                              shown_error, image]), "lora", text, image, shown_error)
    display(box)
    return box


# ---------------------------------------------------------------- Quantization Lab (notebook 05)

BITS_CHOICES = (16, 8, 6, 5, 4, 3, 2)
BLOCK_CHOICES = (16, 32, 64, 128, 256, 1024, None)  # None: one scale for the whole matrix


def quantization_lab_numbers(weight, bits: int, block_size: int | None, scheme: str) -> dict:
    """One setting on one real weight matrix: reconstruction error, storage per weight, the matrix's memory."""
    from .quantization import bits_per_weight, quantize_dequantize, rmse

    restored = quantize_dequantize(weight, bits, block_size, scheme)
    per_weight = bits_per_weight(bits, block_size, weight.numel())
    return {"bits": bits, "block": block_size or "tensor", "scheme": scheme if bits < 16 else "bf16",
            "rmse": rmse(weight, restored), "relative_rmse": rmse(weight, restored) / float(weight.float().pow(2).mean().sqrt()),
            "bits_per_weight": per_weight, "matrix_kb": weight.numel() * per_weight / 8 / 1e3,
            "fp32_matrix_kb": weight.numel() * 4 / 1e3}


def quantization_lab_text(numbers: dict, perplexity: float | None = None, base_perplexity: float | None = None) -> str:
    """The lab's readout."""
    lines = [f"{numbers['bits']} bits, block {numbers['block']}, scheme {numbers['scheme']}: "
             f"{numbers['bits_per_weight']:.3f} bits per weight with scales",
             f"this matrix: {numbers['matrix_kb']:.0f} kB (float32: {numbers['fp32_matrix_kb']:.0f} kB); "
             f"reconstruction RMSE {numbers['rmse']:.2e} ({numbers['relative_rmse']:.1%} of the weights' RMS)"]
    if perplexity is not None:
        lines.append(f"model perplexity on the course text: {perplexity:.2f}"
                     + (f" (unquantised {base_perplexity:.2f})" if base_perplexity else ""))
    return "\n".join(lines)


def quantization_lab_figure(error_rows: list[dict], perplexity_rows: list[dict], base_perplexity: float,
                            marker: tuple | None = None, measured: dict | None = None, current: dict | None = None):
    """Left: reconstruction error of a matrix against bits (per scheme). Right: model perplexity against bits.

    Both curves are drawn at the error rows' block size only (rows at other block sizes, e.g. a whole-matrix
    scale, would join the same line with a jump); `measured` (a `perplexity_grid` row) is drawn as a star with
    its setting in the legend, whatever its block; `current` (a `quantization_lab_numbers` row, the lab's setting)
    as a diamond on the error panel.
    """
    import matplotlib.pyplot as plt

    blocks = {r["block"] for r in error_rows if r["scheme"] != "bf16"}
    perplexity_rows = [r for r in perplexity_rows if r["scheme"] == "bf16" or r["block"] in blocks]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for scheme in sorted({r["scheme"] for r in error_rows if r["scheme"] != "bf16"}):
        group = sorted((r for r in error_rows if r["scheme"] in (scheme, "bf16")), key=lambda r: r["bits"])
        left.semilogy([r["bits"] for r in group], [r["relative_rmse"] for r in group], marker="o", label=scheme)
        pgroup = sorted((r for r in perplexity_rows if r["scheme"] in (scheme, "bf16")), key=lambda r: r["bits"])
        right.semilogy([r["bits"] for r in pgroup], [min(r["perplexity"], 1e4) for r in pgroup], marker="o", label=scheme)
    right.axhline(base_perplexity, color="grey", linestyle=":", label="float32 model")
    if current is not None:
        left.semilogy([current["bits"]], [max(current["relative_rmse"], 1e-6)], marker="D", markersize=9,
                      linestyle="none", color="#2ca02c",
                      label=f"this setting: {current['scheme']}, block {current['block']}: {current['relative_rmse']:.2%}")
    if measured is not None:
        right.semilogy([measured["bits"]], [min(measured["perplexity"], 1e4)], marker="*", markersize=14,
                       linestyle="none", color="#d62728",
                       label=f"measured: {measured['bits']} bits, {measured['scheme']}, block {measured['block']}: "
                             f"{measured['perplexity']:.3g}" + (" (drawn at the 1e4 cap)" if measured["perplexity"] > 1e4 else ""))
    if marker is not None:
        left.axvline(marker[0], color="grey", linestyle="--")
        right.axvline(marker[0], color="grey", linestyle="--")
    left.set(xlabel="bits per weight (before scales)", ylabel="RMSE / RMS of weights", title="One matrix: error")
    right.set(xlabel="bits per weight (before scales)", ylabel="perplexity (log)", title="Whole model: perplexity")
    for ax in (left, right):
        ax.set_xticks(sorted({r["bits"] for r in error_rows}))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def quantization_lab_widget(weight, model, tokenizer, text: str, error_rows: list[dict], perplexity_rows: list[dict],
                            base_perplexity: float):
    """A bits slider, a block-size and a scheme choice; the button measures the model's perplexity live."""
    import ipywidgets as widgets
    from IPython.display import display

    from .quantization import perplexity_grid

    bits = widgets.SelectionSlider(options=list(BITS_CHOICES), value=4, description="bits")
    # 0 stands for "one scale for the whole matrix": a None option value shows as an empty drop-down
    block = widgets.Dropdown(options=[(str(b) if b else "whole matrix", b or 0) for b in BLOCK_CHOICES], value=64,
                             description="block")
    scheme = widgets.ToggleButtons(options=["nf", "int"], value="nf", description="scheme")
    measure = widgets.Button(description="measure perplexity")
    readout, image, shown_error = widgets.HTML(), widgets.Image(format="png"), widgets.HTML()

    def redraw(*_, measured=None):
        numbers = quantization_lab_numbers(weight, bits.value, block.value or None, scheme.value)
        readout.value = _pre(quantization_lab_text(numbers, measured and measured["perplexity"], base_perplexity))
        image.value = _figure_png(quantization_lab_figure(error_rows, perplexity_rows, base_perplexity,
                                                          marker=(bits.value,), measured=measured, current=numbers))

    def on_measure(_):
        measure.disabled, measure.description = True, "measuring..."
        try:
            row = perplexity_grid(model, tokenizer, text, [(bits.value, block.value or None, scheme.value)])[0]
        finally:
            measure.disabled, measure.description = False, "measure perplexity"
        redraw(measured=row)  # unwrapped: its error reaches on_measure's handler, which shows it

    redraw()  # the first draw raises as any cell would (papermill, CI); the controls' callbacks show theirs
    for control in (bits, block, scheme):
        control.observe(_shown(redraw, shown_error), names="value")
    measure.on_click(_shown(on_measure, shown_error))
    box = _mark(widgets.VBox([widgets.HBox([bits, block]), widgets.HBox([scheme, measure]), readout, shown_error, image]),
                "quantization", readout, image, shown_error)
    display(box)
    return box


# ---------------------------------------------------------------- Distillation Lab (notebook 09)

LAB_TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def soft_target_entropy(teacher_logits, temperature: float) -> float:
    """Entropy (nats) of the teacher's soft targets softmax(logits / T): 0 for one sure token, log(V) for uniform."""
    import torch

    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return float(-(log_p.exp() * log_p).sum())


def distillation_lab_numbers(teacher_logits, label: int, temperature: float, alpha: float, steps: int = 60,
                             lr: float = 0.5, top: int = 6) -> dict:
    """Real gradient steps of the distillation loss (`distill.distillation_loss`) on a learnable student distribution
    over the whole vocabulary: its logits start at zero (every token equally likely) and take `steps` Adam steps at
    `lr` towards the teacher's `teacher_logits` (one position of a real prompt) at temperature T, mixed by alpha
    with the label's cross-entropy. Returns the teacher's and the student's probabilities (at T and at 1) of
    the teacher's `top` tokens, the loss and the KL at T per step, and the soft targets' entropy at every
    `LAB_TEMPERATURES` value."""
    import torch

    from .distill import distillation_loss

    teacher = teacher_logits.detach().float().reshape(1, -1)
    target = torch.tensor([int(label)])
    student = torch.zeros_like(teacher, requires_grad=True)
    optimizer = torch.optim.Adam([student], lr=lr)
    losses, kls = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = distillation_loss(student, teacher, target, temperature, alpha)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        with torch.no_grad():
            kls.append(distillation_loss(student, teacher, target, temperature, 1.0).item() / temperature**2)
    student = student.detach()
    tokens = teacher[0].topk(top).indices.tolist()

    def probs(logits, t):
        return torch.softmax(logits[0] / t, dim=-1)[tokens].tolist()

    return {"temperature": temperature, "alpha": alpha, "steps": steps, "tokens": tokens, "label": int(label),
            "teacher_at_t": probs(teacher, temperature), "student_at_t": probs(student, temperature),
            "teacher_at_1": probs(teacher, 1.0), "student_at_1": probs(student, 1.0), "losses": losses, "kl": kls,
            "entropy": soft_target_entropy(teacher[0], temperature),
            "entropy_by_t": {t: soft_target_entropy(teacher[0], t) for t in LAB_TEMPERATURES}}


def distillation_lab_text(numbers: dict, names: Sequence[str]) -> str:
    """The lab's readout: the soft targets' entropy at T, the loss and the KL before and after the steps, and which
    token the student ranks first."""
    first = max(range(len(numbers["tokens"])), key=lambda i: numbers["student_at_1"][i])
    return (f"T {numbers['temperature']:g}, alpha {numbers['alpha']:g}: the teacher's soft targets have entropy "
            f"{numbers['entropy']:.3f} nats (at T 1: {numbers['entropy_by_t'][1.0]:.3f})\n"
            f"loss {numbers['losses'][0]:.3f} -> {numbers['losses'][-1]:.3f} in {numbers['steps']} steps; "
            f"KL(teacher || student) at T {numbers['kl'][0]:.4f} -> {numbers['kl'][-1]:.4f}\n"
            f"the student's first token (at T 1): {names[first]!r}, p {numbers['student_at_1'][first]:.3f}; the "
            f"teacher's: {names[0]!r}, p {numbers['teacher_at_1'][0]:.3f}")


def distillation_lab_figure(numbers: dict, names: Sequence[str], title: str = ""):
    """Three panels: the teacher's soft targets and the student's distribution at T over the teacher's top tokens;
    the loss and the KL per step; the soft targets' entropy against T, the chosen T marked."""
    import matplotlib.pyplot as plt

    fig, (bars, curve, entropy) = plt.subplots(1, 3, figsize=(12, 3.2))
    x = list(range(len(names)))
    bars.bar([i - 0.2 for i in x], numbers["teacher_at_t"], width=0.4, label="teacher (soft targets)")
    bars.bar([i + 0.2 for i in x], numbers["student_at_t"], width=0.4, label="student")
    bars.set_xticks(x, [repr(n)[1:-1][:8] for n in names], rotation=45, fontsize=8)
    bars.set(ylabel=f"probability at T {numbers['temperature']:g}", ylim=(0, 1),
             title="the teacher's top tokens")
    bars.legend(fontsize=8)
    steps = range(1, len(numbers["losses"]) + 1)
    curve.plot(steps, numbers["losses"], label="loss")
    curve.plot(steps, numbers["kl"], label="KL at T")
    curve.set(xlabel="gradient step", yscale="log", title=f"alpha {numbers['alpha']:g}")
    curve.legend(fontsize=8)
    temperatures = list(numbers["entropy_by_t"])
    entropy.plot(temperatures, list(numbers["entropy_by_t"].values()), marker=".")
    entropy.scatter([numbers["temperature"]], [numbers["entropy"]], color="C3", zorder=3, label="this T")
    entropy.set(xlabel="temperature T", ylabel="entropy of the soft targets (nats)", title="softer with T")
    entropy.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def distillation_lab_widget(teacher_logits, label: int, names: Sequence[str], temperature: float = 2.0,
                            alpha: float = 0.5, steps: int = 60, lr: float = 0.5):
    """Sliders for T and alpha over `distillation_lab_numbers` and `distillation_lab_figure`: each move runs the
    gradient steps again from the same start."""
    import ipywidgets as widgets
    from IPython.display import display

    t_slider = widgets.SelectionSlider(options=list(LAB_TEMPERATURES), value=temperature, description="T")
    alpha_slider = widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.1, description="alpha")
    text, image, shown_error = widgets.HTML(), widgets.Image(format="png"), widgets.HTML()

    def redraw(*_):
        numbers = distillation_lab_numbers(teacher_logits, label, t_slider.value, alpha_slider.value, steps, lr,
                                           top=len(names))
        text.value = _pre(distillation_lab_text(numbers, names))
        image.value = _figure_png(distillation_lab_figure(numbers, names))

    redraw()
    for control in (t_slider, alpha_slider):
        control.observe(_shown(redraw, shown_error), names="value")
    box = _mark(widgets.VBox([widgets.HBox([t_slider, alpha_slider]), text, shown_error, image]), "distillation",
                text, image, shown_error)
    display(box)
    return box
