import pytest

from ftcourse.models import embedded_gguf_path, embedded_model_dir, embedding_model_dir, load_adapter_model


def test_embedded_model_ships_in_its_wheel_and_is_cached():
    assert embedded_gguf_path().stat().st_size > 50_000_000
    cached = embedded_model_dir()
    assert (cached / "model.safetensors").exists() and (cached / "tokenizer.json").exists()
    assert "chat_template" in (cached / "tokenizer_config.json").read_text() or (cached / "chat_template.jinja").exists()


def test_embedding_model_folder_exists():
    assert (embedding_model_dir() / "config.json").exists()


def test_tokenizer_has_chat_template(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_missing_adapter_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected adapter_config.json there"):
        load_adapter_model(tmp_path / "nothing")


def test_hub_model_falls_back_to_embedded_when_offline(monkeypatch):
    from ftcourse.models import resolve_model_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="falling back to the embedded SmolLM2-135M-Instruct"):
        path = resolve_model_dir("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert path == str(embedded_model_dir())


def test_the_embedded_decoder_weights_sit_on_the_q4_1_grid(model_and_tokenizer):
    """README and notebook 05 say so: each block of 32 weights of a decoder linear holds at most 16 values."""
    import torch

    model, _ = model_and_tokenizer
    for layer in (0, len(model.model.layers) // 2, len(model.model.layers) - 1):
        for linear in (model.model.layers[layer].self_attn.q_proj, model.model.layers[layer].mlp.down_proj):
            blocks = linear.weight.detach().reshape(-1, 32)
            distinct = (blocks.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1
            assert int(distinct.max()) <= 16
    embeddings = model.model.embed_tokens.weight.detach()[:2000].reshape(-1, 32)
    assert int(((embeddings.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1).max()) > 16  # Q8_0, not 4-bit


def test_weight_storage_counts_each_storage_once():
    """07's measurement: a frozen copy doubles the weights held, a shared (tied) tensor counts once, an adapter adds
    only its own."""
    import copy

    import torch

    from ftcourse.models import weight_storage_mib

    model = torch.nn.Sequential(torch.nn.Linear(512, 512, bias=False), torch.nn.Linear(512, 512, bias=False))
    one = weight_storage_mib(model)
    assert one == pytest.approx(2 * 512 * 512 * 4 / 2**20)
    assert weight_storage_mib(model, copy.deepcopy(model)) == pytest.approx(2 * one)
    assert weight_storage_mib(model, model) == pytest.approx(one)
    model[1].weight = model[0].weight  # tied, as an embedding and an LM head can be
    assert weight_storage_mib(model) == pytest.approx(one / 2)
