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
    assert set(result["by_kind"]) == set(prefs.PAIR_KINDS[:3]) and result["n_pairs"] == 3
    assert result["accuracy"] == sum(c > r for c, r in zip(result["chosen"], result["rejected"])) / 3
    with pytest.raises(ValueError, match="one reply per prompt"):
        reward.reward_scores(model, tokenizer, prompts, ["x"])


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
