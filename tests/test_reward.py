"""Reward-model instruments of notebook 06: TRL's preference format, the machine's arguments, scores by kind."""

import pytest

from ftcourse import preferences as prefs
from ftcourse import reward
from ftcourse.presets import get_preset


def test_preference_dataset_is_trls_conversational_format_with_optional_margins():
    pairs = prefs.make_pairs(prefs.make_questions(4, 0), seed=1)
    data = reward.preference_dataset(pairs)
    assert data.column_names == ["prompt", "chosen", "rejected"] and len(data) == 4
    assert data[0]["chosen"] == [{"role": "assistant", "content": pairs[0].chosen}]
    assert reward.preference_dataset(pairs, margins=[0, 1, 2, 3])["margin"] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="one value per pair"):
        reward.preference_dataset(pairs, margins=[1.0])
    with pytest.raises(TypeError, match="pair 1 must be a PreferencePair"):
        reward.preference_dataset([pairs[0], {"chosen": "x"}])


def test_the_machine_fixes_precision_logging_and_checkpointing():
    import warnings

    from trl import RewardConfig

    args = reward.preset_reward_args(get_preset("cpu"))
    assert args["use_cpu"] and args["report_to"] == "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning may reach a learner's cell
        config = RewardConfig(output_dir="unused", **args)  # every argument is one RewardConfig takes
    assert not config.gradient_checkpointing and not config.activation_checkpointing
    assert config.logging_steps == 1 and config.max_length == args["max_length"]


def test_the_reward_model_scores_each_reply_and_pairwise_accuracy_counts_by_kind():
    from ftcourse.models import load_tokenizer

    tokenizer = load_tokenizer()
    model = reward.load_reward_model()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    pairs = prefs.make_pairs(prefs.make_questions(3, 5), seed=2)
    prompts = [p.prompt for p in pairs]
    one_by_one = [reward.reward_scores(model, tokenizer, [p], [c])[0] for p, c in zip(prompts, [p.chosen for p in pairs])]
    batched = reward.reward_scores(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size=3)
    assert batched == pytest.approx(one_by_one, abs=1e-4)  # padding does not move the reward (read at the last real token)
    result = reward.pairwise_accuracy(model, tokenizer, pairs)
    five = prefs.make_pairs(prefs.make_questions(5, 6), seed=3)  # every kind: replies that share more or less
    shared = reward.pair_scores(model, tokenizer, five, batch_size=4)  # the prompt run once per pair (two batches)
    alone = [reward.reward_scores(model, tokenizer, [p.prompt for p in five], [getattr(p, side) for p in five])
             for side in ("chosen", "rejected")]
    assert shared[0] == pytest.approx(alone[0], abs=1e-3) and shared[1] == pytest.approx(alone[1], abs=1e-3)
    assert set(result["by_kind"]) == set(prefs.PAIR_KINDS[:3]) and result["n_pairs"] == 3
    assert result["accuracy"] == sum(c > r for c, r in zip(result["chosen"], result["rejected"])) / 3
    with pytest.raises(ValueError, match="one reply per prompt"):
        reward.reward_scores(model, tokenizer, prompts, ["x"])


def test_replies_that_share_a_prompt_run_it_once_and_score_as_whole_conversations_do():
    """RLOO's groups of samples and the lab's replies per question: the prompt's cache serves each reply. Scores and
    last-token states equal a whole forward pass's (right padded), for groups of 1 to 4 replies split over batches."""
    import torch

    from ftcourse.models import load_tokenizer

    tokenizer = load_tokenizer()
    model = reward.load_reward_model()
    questions = prefs.make_questions(4, 7)
    replies = ["There are 3.", "3", "There are 3 apples in total, I counted them twice.", "Four.", "There are 12 pens.",
               "12", "I do not know.", "There are 5 spoons in the list, and 2 pens.", "Five."]
    prompts = [questions[q].prompt for q in (0, 1, 1, 2, 2, 2, 3, 3, 3)]  # groups of 1, 2, 3 and 3 replies
    assert reward.groups_by_prompt(prompts) == [[0], [1, 2], [3, 4, 5], [6, 7, 8]]
    texts = reward.reward_texts(tokenizer, prompts, replies)
    plain = reward.reward_scores(model, tokenizer, prompts, replies, share_prompts=False)
    for batch_size in (3, 32):  # several batches (each holds whole groups), and one
        scores, states = reward.shared_prompt_outputs(model, tokenizer, texts, reward.groups_by_prompt(prompts),
                                                      batch_size, features=True)
        assert scores == pytest.approx(plain, abs=1e-4)
        assert reward.reward_scores(model, tokenizer, prompts, replies, batch_size=batch_size) == scores
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
    whole = hidden[torch.arange(len(texts)), batch["attention_mask"].sum(1) - 1]
    assert torch.allclose(states, whole, atol=1e-3) and states.shape == (len(texts), model.config.hidden_size)
    with pytest.raises(ValueError, match="exactly once"):
        reward.shared_prompt_outputs(model, tokenizer, texts, [[0, 1]], 4)


def test_reward_pairs_come_from_disjoint_splits_in_the_kinds_asked_for():
    train = reward.reward_pairs(("echo", "echo", "padded"), n_train=30)
    assert [p.kind for p in train[:3]] == ["echo", "echo", "padded"] and len(train) == 30
    validation = reward.reward_pairs(prefs.REWARD_KINDS, split="validation", n_eval=12)
    heldout = reward.reward_pairs(prefs.REWARD_KINDS, split="heldout", n_eval=12, heldout_seed=918273)
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    assert not {p.prompt for p in validation} & {p.prompt for p in heldout}
    with pytest.raises(ValueError, match="needs the grader's seed"):
        reward.reward_pairs(split="heldout")


def test_a_reward_recipe_is_checked_like_an_sft_recipe_with_its_own_task_and_choices(tmp_path):
    from peft import LoraConfig
    from trl import RewardConfig, SFTConfig

    from ftcourse.training import RecipeError, checked_recipe, config_dict, preset_layers

    preset = get_preset("cpu")
    fixed = reward.preset_reward_args(preset)
    lora = LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                      layers_to_transform=[28, 29])
    args = RewardConfig(output_dir=str(tmp_path), max_steps=12, learning_rate=1e-3, seed=3, **fixed)
    rebuilt_lora, rebuilt_args, base = checked_recipe({"lora_config": lora, "reward_config": args}, preset, 40,
                                                      "padded", tmp_path)
    assert type(rebuilt_args).__name__ == "RewardConfig" and base == {} and preset_layers(preset) == 30
    assert rebuilt_lora.layers_to_transform == [28, 29] and rebuilt_args.max_steps == 12
    assert config_dict(rebuilt_args, "r") | {"output_dir": None} == config_dict(args, "r") | {"output_dir": None}
    bad = {
        "task_type must be 'SEQ_CLS'": {"lora_config": LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]),
                                "reward_config": args},
        "from 0 to 29": {"lora_config": LoraConfig(task_type="SEQ_CLS", target_modules=["q_proj"],
                                                    layers_to_transform=[30]), "reward_config": args},
        "at most 40": {"lora_config": lora, "reward_config": RewardConfig(output_dir="x", max_steps=41, **fixed)},
        "must be a RewardConfig": {"lora_config": lora, "reward_config": SFTConfig(output_dir="x", **fixed)},
        "reward_config.max_length": {"lora_config": lora,
                                     "reward_config": RewardConfig(output_dir="x", max_steps=5, **(fixed | {"max_length": 64}))},
    }
    for message, configs in bad.items():
        with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            checked_recipe(configs, preset, 40, "padded")


REFERENCE_SETUP = ("pair_kinds = ('padded', 'no_count', 'echo')\n"
                   "lora_config = LoraConfig(task_type='SEQ_CLS', r=16, lora_alpha=32, target_modules=['q_proj', 'v_proj'],"
                   " layers_to_transform=list(range(24, 30)))\n"
                   "reward_config = RewardConfig(output_dir='x', max_steps=24, learning_rate=1e-3, "
                   "lr_scheduler_type='constant', per_device_train_batch_size=4, seed=SEED, **REWARD_ARGS)\n")


def _grade_reward_setup(source: str, tmp_path):
    from ftcourse.grading import registry
    from ftcourse.grading.learner import Cells
    from ftcourse.grading.produce import produce_and_evaluate
    from ftcourse.grading.secret import heldout_seed

    exercise = registry.exercise("reward_final_outcome")
    return produce_and_evaluate(exercise, Cells({"reward_setup": source}, "cpu", 0), get_preset("cpu"), heldout_seed(),
                                tmp_path)


@pytest.mark.parametrize("change,named", [
    (("max_steps=24", "max_steps=41"), "at most 40"),
    (("task_type='SEQ_CLS'", "task_type='CAUSAL_LM'"), "task_type must be 'SEQ_CLS'"),
    (("('padded', 'no_count', 'echo')", "('padded', 'louder')"), "unknown kinds"),
    (("('padded', 'no_count', 'echo')", "'padded'"), "tuple of 1 to 20 kind names"),
    (("reward_config = RewardConfig(", "from trl import SFTConfig\nreward_config = SFTConfig("), "does not have"),
    (("seed=SEED,", "seed=SEED, gradient_accumulation_steps=4,"), "gradient_accumulation_steps"),
    (("layers_to_transform=list(range(24, 30))", "layers_to_transform=[40]"), "from 0 to 29"),
])
def test_exercise_6_2_refuses_what_it_would_not_train_before_training(change, named, learner_runtime, tmp_path):
    """Part of the tamper suite for 6.2: choices the grader cannot train fail with the field named, at no cost."""
    old, new = change
    assert old in REFERENCE_SETUP
    verdict = _grade_reward_setup(REFERENCE_SETUP.replace(old, new), tmp_path)
    assert not verdict.passed and named in verdict.message, verdict
    assert not (tmp_path / "adapter").exists()  # refused before any training


def test_exercise_6_2_padded_pairs_only_fail_on_held_out_kinds(learner_runtime, tmp_path):
    """The skill of 6.2 is choosing the pairs: §3's demo copied (padded pairs only, its LoRA on the top six layers'
    attention, its 12 steps) trains, and fails held-out no_count and echo pairs, where brevity points the wrong way."""
    demo = ("pair_kinds = ('padded',)\n"
            "lora_config = LoraConfig(task_type='SEQ_CLS', r=preset.lora_r, lora_alpha=2 * preset.lora_r,"
            " target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'], layers_to_transform=list(range(24, 30)))\n"
            "reward_config = RewardConfig(output_dir='build/reward_demo', max_steps=12, learning_rate=1e-3, "
            "lr_scheduler_type='constant', per_device_train_batch_size=4, seed=SEED, **REWARD_ARGS)\n")
    verdict = _grade_reward_setup(demo, tmp_path)
    assert not verdict.passed and verdict.metrics["steps"] == 12, verdict
    assert verdict.metrics["padded_accuracy"] >= 0.9
    assert min(verdict.metrics["no_count_accuracy"], verdict.metrics["echo_accuracy"]) < 0.9

def test_the_cpu_reward_trainer_runs_each_pairs_prompt_once_with_rewardtrainers_losses(tmp_path, float32_cpu_preset):
    """`reward_trainer_class` on the float32 CPU preset: each pair's prompt goes through the backbone once (half the
    rows, the pairs' common columns), the rest of each row on its cache; three steps log `RewardTrainer`'s losses
    and leave the same adapter and score head, up to rounding. A batch that is not pairs, or pairs whose replies
    differ at the first column, share nothing."""
    import torch
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    from ftcourse.models import load_tokenizer
    from ftcourse.training import train_pairs

    preset = float32_cpu_preset  # float32 on every machine: the losses agree to rounding
    trainer_cls = reward.reward_trainer_class(preset)
    assert trainer_cls is not RewardTrainer and issubclass(trainer_cls, RewardTrainer)
    tokenizer = load_tokenizer()
    pairs = reward.reward_pairs(("padded", "no_count", "echo"), n_train=preset.n_train)[:12]
    lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      layers_to_transform=[26, 27, 28, 29])
    args = RewardConfig(output_dir=str(tmp_path), max_steps=3, learning_rate=1e-3, per_device_train_batch_size=4, seed=0,
                        **reward.preset_reward_args(preset))
    trainer_cls.backbone_positions = calls = []
    try:
        shared, shared_result, _ = train_pairs(trainer_cls, reward.load_reward_model(seed=0), tokenizer,
                                               reward.preference_dataset(pairs), lora, args, progress=False)
    finally:
        trainer_cls.backbone_positions = None
    plain, plain_result, _ = train_pairs(RewardTrainer, reward.load_reward_model(seed=0), tokenizer,
                                         reward.preference_dataset(pairs), lora, args, progress=False)
    assert shared_result.losses == pytest.approx(plain_result.losses, rel=1e-4, abs=1e-5)
    assert len(calls) == 6 and all(calls[k][0] == 4 and calls[k + 1][0] == 8 for k in (0, 2, 4)), calls
    assert all(calls[k][1] > 40 for k in (0, 2, 4))  # the system turn, the instruction and the list: most of a row
    trained = {k: v for k, v in shared.named_parameters() if v.requires_grad}
    for name, value in plain.named_parameters():
        if value.requires_grad:
            assert torch.allclose(trained[name], value, atol=1e-5), name
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 0], [1, 2, 3, 6], [1, 2, 5, 7]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert reward.paired_prompt_width(ids, mask) == 2  # both pairs share 3 columns; row 1 has 3 tokens, keeps one
    assert reward.paired_prompt_width(ids[:3], mask[:3]) == 0
    assert reward.paired_prompt_width(torch.tensor([[1, 2], [3, 2]]), torch.ones(2, 2, dtype=torch.long)) == 0
