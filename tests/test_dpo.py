"""Notebook 07's DPO instruments: the log-probabilities of replies from scratch and TRL's loss on given
log-probabilities, together against a real DPOTrainer batch; a from-scratch DPO loss (as a learner writes it)
against the library's, with its gradients."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ftcourse import dpo
from ftcourse import preferences as prefs


def style_pairs(questions, seed):
    """Pairs in the model's own reply style (scripts/measure_dpo.py; Exercise 7.2's answer, so not in the package)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import measure_dpo

    return measure_dpo.style_pairs(questions, seed)


def from_scratch_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
    """What exercise 7.1 asks for: mean -log sigmoid(beta * (policy log-ratio - reference log-ratio))."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()


# A LoRA adapter initialised at random, so the policy differs from its reference (the adapter switched off)
RANDOM_LORA = dict(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def fp32_cpu():
    """The cpu preset on its float32 path whatever this CPU decided: these checks compare computations, and ours
    run without autocast (under bf16 autocast the trainer's log-probabilities differ from them by ~0.2)."""
    import dataclasses

    from ftcourse.presets import get_preset

    return dataclasses.replace(get_preset("cpu"), bf16=False, fp16=False)


def shallow_model():
    """The course model cut to its first 2 decoder layers: the checks here do not depend on depth."""
    from conftest import keep_first_layers
    from ftcourse.models import load_model

    model = load_model()
    keep_first_layers(model, 2)
    return model


def test_reply_logps_and_the_library_loss_equal_a_real_dpo_trainer_batch(tokenizer, tmp_path):
    """DPOTrainer given a new adapter (its reference: the adapter switched off, computed in the same step) on one
    batch of 4 pairs of four kinds: its loss and its logged log-probabilities and rewards, recomputed from ours."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from ftcourse.reward import preference_dataset

    pairs = prefs.make_pairs(prefs.make_questions(4, 3), seed=3, kinds=("padded", "wrong", "padded_wrong", "echo"))
    beta = 0.3
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, beta=beta, seed=0,
                     **dpo.preset_dpo_args(fp32_cpu()))
    torch.manual_seed(0)
    trainer = DPOTrainer(model=shallow_model(), args=args, train_dataset=preference_dataset(pairs),
                         processing_class=tokenizer, peft_config=LoraConfig(**RANDOM_LORA))
    for row, pair in zip(trainer.train_dataset, pairs):  # the same tokens, cut in the same place
        assert dpo.reply_tokens(tokenizer, pair.prompt, pair.chosen, pair.rejected) == (
            row["prompt_ids"], [row["chosen_ids"], row["rejected_ids"]])
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    model = trainer.model.eval()
    chosen, rejected = dpo.pair_logps(model, tokenizer, pairs)
    ref_chosen, ref_rejected = dpo.pair_logps(model, tokenizer, pairs, reference=True)
    in_order = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])  # pair by pair
    trl_ref = trainer.compute_ref_log_probs(trainer.model, in_order)
    assert torch.allclose(ref_chosen, trl_ref[0].float(), atol=1e-3)
    assert torch.allclose(ref_rejected, trl_ref[1].float(), atol=1e-3)
    assert (chosen - ref_chosen).abs().max() > 0.05  # the random adapter moved the policy: the reference matters here
    assert float(chosen.mean()) == pytest.approx(logged["logps/chosen"], abs=1e-3)
    assert float(rejected.mean()) == pytest.approx(logged["logps/rejected"], abs=1e-3)
    loss, metrics = dpo.dpo_trainer_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
    assert float(loss) == pytest.approx(float(trl_loss), abs=1e-4)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[key] == pytest.approx(logged[key], abs=1e-4), key
    rewards = dpo.implicit_rewards(model, tokenizer, pairs, beta)
    assert rewards["margin"] == pytest.approx(logged["rewards/margins"], abs=1e-4)
    assert rewards["accuracy"] == pytest.approx(logged["rewards/accuracies"])


def test_the_reference_is_the_base_model_with_no_second_copy(tokenizer):
    """reference=True reads the same weights as the model before LoRA, and the PEFT model holds one copy of the
    base weights (its parameters are the base's plus the adapter's)."""
    from peft import LoraConfig, get_peft_model

    base = shallow_model()
    torch.manual_seed(0)
    shallow_peft_model = get_peft_model(shallow_model(), LoraConfig(**RANDOM_LORA))
    pairs = prefs.make_pairs(prefs.make_questions(2, 5), seed=5, kinds=("padded", "no_count"))
    reference = dpo.pair_logps(shallow_peft_model, tokenizer, pairs, reference=True)
    plain = dpo.pair_logps(base, tokenizer, pairs)
    for a, b in zip(reference, plain):
        assert torch.allclose(a, b, atol=1e-4)
    adapter = sum(p.numel() for n, p in shallow_peft_model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in shallow_peft_model.parameters()) == sum(p.numel() for p in base.parameters()) + adapter
    with pytest.raises(ValueError, match="PEFT model"):
        dpo.pair_logps(base, tokenizer, pairs, reference=True)


def test_the_reference_is_the_ref_adapter_when_trl_keeps_one(tokenizer):
    """Handed a model whose adapter was already trained, TRL keeps a copy named "ref" as the reference; reference=True
    reads that adapter and leaves the active one as it was."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(shallow_model(), LoraConfig(**RANDOM_LORA))
    torch.manual_seed(1)
    model.add_adapter("ref", LoraConfig(**RANDOM_LORA))
    pairs = prefs.make_pairs(prefs.make_questions(2, 6), seed=6, kinds=("wrong",))
    reference = dpo.pair_logps(model, tokenizer, pairs, reference=True)
    assert model.active_adapter == "default"
    policy = dpo.pair_logps(model, tokenizer, pairs)
    model.set_adapter("ref")
    as_ref = dpo.pair_logps(model, tokenizer, pairs)
    for r, a, p in zip(reference, as_ref, policy):
        assert torch.allclose(r, a, atol=1e-5) and not torch.allclose(r, p, atol=1e-3)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_a_from_scratch_dpo_loss_and_its_gradients_equal_the_library_loss(beta):
    generator = torch.Generator().manual_seed(int(beta * 100))
    values = [-torch.rand(6, generator=generator) * 40 for _ in range(4)]
    values[0][0] = values[1][0] - 400.0  # a confident mistake: the chosen reply far less likely under the policy
    mine_inputs = [v.clone().requires_grad_(True) for v in values[:2]]
    trl_inputs = [v.clone().requires_grad_(True) for v in values[:2]]
    mine = from_scratch_dpo_loss(*mine_inputs, *values[2:], beta)
    library, metrics = dpo.dpo_trainer_loss(*trl_inputs, *values[2:], beta=beta)
    assert torch.isfinite(library) and mine.item() == pytest.approx(library.item(), rel=1e-6)
    mine.backward()
    library.backward()
    for a, b in zip(mine_inputs, trl_inputs):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)
    margins = beta * ((values[0] - values[2]) - (values[1] - values[3]))
    assert metrics["rewards/margins"] == pytest.approx(float(margins.mean()), rel=1e-5)
    assert metrics["rewards/accuracies"] == pytest.approx(float((margins > 0).float().mean()))


def test_bad_inputs_get_an_error_naming_the_argument():
    good = torch.zeros(3)
    with pytest.raises(ValueError, match="rejected_logps has 2 values"):
        dpo.dpo_trainer_loss(good, torch.zeros(2), good, good)
    with pytest.raises(ValueError, match="ref_chosen_logps must be a 1-D"):
        dpo.dpo_trainer_loss(good, good, torch.zeros(3, 1), good)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo.dpo_trainer_loss(good, good, good, good, beta=0.0)
    with pytest.raises(ValueError, match=r"chosen_logps\[1\] is 2.5: a log-probability is <= 0"):
        dpo.dpo_trainer_loss(torch.tensor([-1.0, 2.5, -3.0]), good, good, good)  # losses passed for log-probabilities
    with pytest.raises(TypeError, match="pair 1 must be a PreferencePair"):
        dpo.pair_logps(None, None, [prefs.make_pairs(prefs.make_questions(1, 0), 0, ("padded",))[0], ("a", "b")])


def test_bad_inputs_to_the_log_probabilities_are_refused_before_the_model_runs(tokenizer):
    pairs = prefs.make_pairs(prefs.make_questions(2, 0), 0, ("padded",))
    model = shallow_model()
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        dpo.pair_logps(model, tokenizer, pairs, batch_size=0)
    with pytest.raises(ValueError, match="reference=True needs a PEFT model"):
        dpo.pair_logps(model, tokenizer, pairs, reference=True)
    with pytest.raises(ValueError, match="row 1 has .* tokens, over max_length=40"):
        dpo.reply_logps(model, tokenizer, ["Hi", pairs[0].prompt], ["Hello.", "4."], max_length=40)
    with pytest.raises(TypeError, match="row 0: reply 0 must be a string"):
        dpo.reply_logps(model, tokenizer, ["Hi"], [None])
    with pytest.raises(ValueError, match="one reply per prompt"):
        dpo.reply_logps(model, tokenizer, ["Hi", "Hi"], ["Hello."])
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo.implicit_rewards(model, tokenizer, pairs, beta=0.0)


def test_style_pairs_differ_only_in_the_count_and_follow_the_judge():
    questions = prefs.make_questions(20, 11)
    pairs = style_pairs(questions, seed=2)
    assert pairs == style_pairs(questions, seed=2)  # seeded
    for q, p in zip(questions, pairs):
        assert p.kind == "style" and p.prompt == q.prompt
        assert prefs.judge(q, p.chosen) == 1.0 and prefs.judge(q, p.rejected) == 0.0
        assert p.chosen.replace(str(q.answer), "#", 1) == p.rejected.replace(str(prefs.reply_numbers(p.rejected)[0]), "#", 1)
        assert f": {prefs.reply_numbers(p.rejected)[0]}\n" in q.prompt + "\n"  # a count from the list: a plausible mistake
    with pytest.raises(TypeError, match="question 1 must be a preferences.Question"):
        style_pairs([questions[0], "How many?"], seed=0)


def test_train_dpo_records_each_step_and_moves_the_policy_from_its_reference(tokenizer, tmp_path):
    """The packaged recipe on the shallow model: 3 steps on style pairs; before training the new adapter is the
    reference (log-ratio 0 on the policy's own replies), after it the policy has moved and prefers the chosen replies."""
    from peft import LoraConfig
    from trl import DPOConfig

    from ftcourse.presets import get_preset

    questions = prefs.make_questions(12, 4)
    pairs = style_pairs(questions, seed=4)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = DPOConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                     lr_scheduler_type="constant", beta=0.1, seed=0, **dpo.preset_dpo_args(get_preset("cpu")))
    model, result, logged = dpo.train_dpo(shallow_model(), tokenizer, pairs, lora, args, progress=False)
    assert result.steps == 3 and len(result.losses) == 3 and [row["step"] for row in logged] == [1, 2, 3]
    assert result.losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the first step: log 2
    assert lora.modules_to_save is None and "q_proj" in lora.target_modules  # the caller's config is not filled in
    after = dpo.implicit_rewards(model, tokenizer, pairs, beta=0.1)
    assert after["margin"] > 0 and after["accuracy"] > 0.5
    scores = dpo.policy_scores(model, tokenizer, questions[:4], max_new_tokens=6)
    assert set(scores) >= {"judge", "right", "words", "log_ratio", "replies"} and len(scores["replies"]) == 4
    assert abs(scores["log_ratio"]) > 1e-4  # the trained adapter reads its own replies differently from the reference
    from peft import get_peft_model

    fresh = get_peft_model(shallow_model(), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj"]))
    assert dpo.policy_scores(fresh, tokenizer, questions[:2], max_new_tokens=4)["log_ratio"] == pytest.approx(0.0, abs=1e-6)


def test_the_cpu_dpo_trainer_logs_what_dpo_trainer_logs_with_fewer_rows_through_the_lm_head(tokenizer, tmp_path,
                                                                                              float32_cpu_preset):
    """`dpo_trainer_class` on the CPU preset: the same losses, rewards, log-probabilities and metrics as TRL's
    `DPOTrainer` over 2 steps from the same seed, in every call its fused LM head projects fewer rows (the
    replies' tokens, not every position), and its backbone runs the prompt columns of each pair once for its chosen
    and rejected rows: a TRL change that silently dropped either speed-up fails here. On the float32 path on every
    machine (`float32_cpu_preset`), where sharing agrees to rounding."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer
    from conftest import counting_lm_head_rows

    preset = float32_cpu_preset
    positions: list[tuple] = []  # (rows, columns) of each backbone call: the shared prompts, then the rest
    cpu_class = type("Counting", (dpo.dpo_trainer_class(preset),), {"backbone_positions": positions})
    assert preset.lm_head_on_labels_only and issubclass(cpu_class, DPOTrainer) and cpu_class is not DPOTrainer
    assert dpo.dpo_trainer_class(dataclasses.replace(preset, lm_head_on_labels_only=False)) is DPOTrainer
    pairs = style_pairs(prefs.make_questions(8, 5), seed=5)
    scored_rows: dict[str, list[int]] = {}

    def logged(trainer_class) -> list[dict]:
        args = DPOConfig(output_dir=str(tmp_path / trainer_class.__name__), max_steps=2, per_device_train_batch_size=4,
                         learning_rate=5e-3, lr_scheduler_type="constant", beta=0.1, seed=0,
                         **dpo.preset_dpo_args(preset))
        lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        with counting_lm_head_rows(scored_rows.setdefault(trainer_class.__name__, [])):
            _, _, rows = dpo.train_dpo(shallow_model(), tokenizer, pairs, lora, args, progress=False,
                                       trainer_class=trainer_class)
        return rows

    ours, theirs = logged(cpu_class), logged(DPOTrainer)
    mine, full = scored_rows[cpu_class.__name__], scored_rows["DPOTrainer"]
    assert len(mine) == len(full) == 4 and all(m < f for m, f in zip(mine, full)), (mine, full)  # policy + reference
    # each call ran the 4 pairs' common prompt columns once, then the 8 rows
    assert len(positions) == 8 and all(p[0] == 4 and r[0] == 8 for p, r in zip(positions[::2], positions[1::2]))
    assert len(ours) == len(theirs) == 2 and ours[0].keys() == theirs[0].keys() and "rewards/margins" in ours[0]
    assert theirs[1]["rewards/margins"] != 0  # the second step compares a moved policy, not zeros
    for a, b in zip(ours, theirs):
        for key in b:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_training_inside_an_outer_autocast_region_is_refused(tokenizer, tmp_path):
    """Inside `with preset.autocast():` torch keeps the bf16 copies of the adapter's weights made at the first step
    until the region ends, so DPO trained blind (every step's rewards 0, found in scripts/measure_dpo.py's bf16
    rows): the packaged recipes refuse to start there, and say where to put the autocast instead."""
    from peft import LoraConfig
    from trl import DPOConfig

    from ftcourse.training import refuse_outer_autocast, run_trainer

    pairs = style_pairs(prefs.make_questions(4, 4), seed=4)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj"])
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, seed=0,
                     **dpo.preset_dpo_args(fp32_cpu()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="inside `with preset.autocast"):
            dpo.train_dpo(None, tokenizer, pairs, lora, args, progress=False)
        with pytest.raises(RuntimeError, match="evaluation only"):
            run_trainer(None, tokenizer, [], lora, args, fp32_cpu(), "padded")
    refuse_outer_autocast()  # outside any region: nothing to refuse
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        refuse_outer_autocast()


def _reference_setup() -> str:
    from conftest import reference_solution

    return reference_solution("07_dpo", "dpo_setup")


def _grade_dpo_setup(source: str, tmp_path):
    from conftest import grade_outcome_cell

    return grade_outcome_cell("dpo_final_outcome", "dpo_setup", source, tmp_path)


@pytest.mark.parametrize("change,named", [
    (("max_steps=12", "max_steps=17"), "at most 16"),
    (('task_type="CAUSAL_LM"', 'task_type="SEQ_CLS"'), "task_type must be 'CAUSAL_LM'"),
    (("beta=0.1", "beta=0.0"), "beta must be a number in (0"),
    (("beta=0.1,", "beta=0.1, loss_type=['hinge'],"), "this exercise keeps it at"),
    (("beta=0.1, seed=SEED, **DPO_ARGS)", "beta=0.1, seed=SEED, **DPO_ARGS)\nfrom trl import SFTConfig\n"
                                           "dpo_config = SFTConfig(output_dir='x', max_steps=12, **DPO_ARGS)"), "does not have"),
    (("return sentence.format(question.answer), sentence.format(wrong_count(question, rng))",
      "return sentence.format(wrong_count(question, rng)), sentence.format(question.answer)"), "pair 0: the judge scores"),
    (("return sentence.format(question.answer), sentence.format(wrong_count(question, rng))",
      "return sentence.format(question.answer), sentence.format(question.answer)"), "pair 0: chosen and rejected are the same"),
    (("return sentence.format(question.answer), sentence.format(wrong_count(question, rng))",
      "return [sentence.format(question.answer)]"), "dpo_pair must return (chosen, rejected)"),
])
def test_exercise_7_2_refuses_what_it_would_not_train_before_training(change, named, learner_runtime, tmp_path):
    """Part of the tamper suite for 7.2: choices and pairs the grader cannot train fail with the field or the row
    named, before any training."""
    old, new = change
    reference = _reference_setup()
    assert old in reference
    verdict = _grade_dpo_setup(reference.replace(old, new), tmp_path)
    assert not verdict.passed and named in verdict.message, verdict
    assert not (tmp_path / "adapter").exists()  # refused before any training


def test_exercise_7_2_section_3s_pairs_copied_fail(learner_runtime, tmp_path):
    """The skill of 7.2 is building pairs that teach what the judge checks: section 3's pairs (06's padded kind, which
    differ in length only) with section 3's recipe train, and the held-out judge falls (the README's DPO section:
    -0.19 on the seed measured; pairs in 06's `wrong` templates are a different attempt, and pass or fail with the
    seed)."""
    copied = ("from ftcourse import preferences\n"
              "def dpo_pair(question, rng):\n"
              "    pair = preferences.make_pairs([question], rng.randrange(10**6), ('padded',))[0]\n"
              "    return pair.chosen, pair.rejected\n"
              "lora_config = LoraConfig(task_type='CAUSAL_LM', r=preset.lora_r, lora_alpha=2 * preset.lora_r,"
              " target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])\n"
              "dpo_config = DPOConfig(output_dir='build/dpo_demo', max_steps=12, learning_rate=5e-4, "
              "lr_scheduler_type='constant', per_device_train_batch_size=4, beta=0.1, seed=SEED, **DPO_ARGS)\n")
    verdict = _grade_dpo_setup(copied, tmp_path)
    assert not verdict.passed and verdict.metrics["steps"] == 12, verdict
    assert verdict.metrics["judge_gain"] < 0 and verdict.metrics["words"] < 4, verdict.metrics


def test_exercise_7_2_pairs_are_checked_as_the_trainer_will_read_them(tokenizer):
    """Replies the trainer would cut (over the DPOConfig's max_length), chat-template control text, text that is not
    valid UTF-8 and very long replies are refused before training, naming the row (a learner's input, not a
    grader fault)."""
    questions = prefs.make_questions(3, 5)
    good = [(f"There are {q.answer} {q.item} in total.", f"There are {prefs.wrong_count(q, __import__('random').Random(0))} "
             f"{q.item} in total.") for q in questions]
    assert len(dpo.checked_pairs(questions, good, tokenizer, 128)) == 3
    padding = "根据您提供的清单我仔细核对了每一行您询问的物品数量是" * 3
    bad = {
        "over the DPOConfig's max_length": (f"{padding} {questions[1].answer}", f"{padding} 1"),
        "control text '<|im_end|>'": (f"{questions[1].answer}<|im_end|>", "none"),
        "not valid text": (f"{questions[1].answer}\ud800", "none"),
        "at most 400 characters": ("x" * 401 + f" {questions[1].answer}", "none"),
    }
    for named, pair in bad.items():
        with pytest.raises(ValueError, match=f"pair 1: .*{__import__('re').escape(named)}"):
            dpo.checked_pairs(questions, [good[0], pair, good[2]], tokenizer, 128)
