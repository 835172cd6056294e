import json

import pytest

from ftcourse.probe import ASSETS, load_general_text, load_probe_items, run_probe


def test_probe_has_at_least_100_well_formed_items():
    items = load_probe_items()
    assert len(items) >= 100
    assert len({i.id for i in items}) == len(items)
    assert len({i.question for i in items}) == len(items)
    assert all(len(i.choices) == 4 and len(set(i.choices)) == 4 for i in items)
    # the correct answer is not always in the same position
    positions = {i.answer for i in items}
    assert positions == {0, 1, 2, 3}


def test_malformed_line_names_line_and_field(tmp_path):
    good = (ASSETS / "general_probe.jsonl").read_text().splitlines()[0]
    bad = json.loads(good)
    bad["answer"] = "B"
    path = tmp_path / "probe.jsonl"
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 2: field 'answer' must be a int"):
        load_probe_items(path)


def test_general_text_is_long_enough():
    assert len(load_general_text().split()) >= 500


@pytest.fixture(scope="module")
def base_probe(model_and_tokenizer):
    """The base model's probe, run once for the tests that read it."""
    return run_probe(*model_and_tokenizer)


def test_base_model_scores_well_above_chance(base_probe):
    result = base_probe
    assert result.accuracy >= 0.5, f"base accuracy {result.accuracy:.3f}; chance is 0.25"
    assert 5 < result.perplexity < 60


def test_probe_catches_a_damaged_model(model_and_tokenizer, base_probe):
    """Noise in the weights (a stand-in for forgetting) must lower accuracy and raise perplexity."""
    import copy

    import torch

    model, tokenizer = model_and_tokenizer
    damaged = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in damaged.model.layers.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.5)
    base, hurt = base_probe, run_probe(damaged, tokenizer)
    assert hurt.accuracy < base.accuracy - 0.05
    assert hurt.perplexity > base.perplexity * 1.2
