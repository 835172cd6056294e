"""Shared fixtures: the embedded model loads once per test session (0.2 s after the first conversion)."""

import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def model_and_tokenizer():
    from ftcourse.models import load_model_and_tokenizer

    return load_model_and_tokenizer()


@pytest.fixture(scope="session")
def tokenizer(model_and_tokenizer):
    return model_and_tokenizer[1]
