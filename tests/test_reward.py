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
    assert set(result["by_kind"]) == set(prefs.PAIR_KINDS) and result["n_pairs"] == 3
    assert result["accuracy"] == sum(c > r for c, r in zip(result["chosen"], result["rejected"])) / 3
    with pytest.raises(ValueError, match="one reply per prompt"):
        reward.reward_scores(model, tokenizer, prompts, ["x"])
