"""A real pretrained policy through the online RL loop (issue 16): SmolLM2-135M-Instruct, imported from its GGUF
by `marginkit models import-gguf` (the session fixture `smollm2_dir`), trained by `marginkit train-grpo` for 2
steps on the CPU against an all-MiniLM-L6-v2 reward model (`marginkit train-rm`, 3 steps on 32 HH-RLHF pairs),
on real HH-RLHF prompts given as chat messages (single- and multi-turn).

This is about the loop running a real model with a real tokenizer, not about what is learnt: the run completes
with finite metrics, the saved policy is a plain HF folder whose weights moved, the rollout renders each prompt
with SmolLM2's chat template and ends completions at its end-of-turn token <|im_end|>, left padding leaves
every row's log-probs as its unpadded forward gives them, and the RM scored the decoded completion texts,
read at [CLS], as an unbatched forward scores them. The generator and the RM are spied on in-process (the
loop does not persist completions).

Torch runs single-threaded here: on the shared 2-core VM two intra-op threads contend with the other
processes (one rollout measured 1.6 s single-threaded, 15 to 48 s with two threads).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from _engine_helpers import one_torch_thread
from _pretrained_helpers import hh_messages, needs_minilm, needs_smollm2
from _rl_helpers import metric_rows
from conftest import shared_data_dir


def real_run(test):
    """The marks of every test that reads the run below: slow (CI runs it), shared data, the two weight packages."""
    return pytest.mark.slow(pytest.mark.shared_data(needs_smollm2(needs_minilm(test))))


HH = Path("hh-rlhf") / "harmless-base" / "test.jsonl.gz"
STEPS, PROMPTS_PER_STEP, GENERATIONS, MAX_NEW = 2, 2, 2, 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def test_hh_messages_by_hand():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant:"
    assert hh_messages(prompt) == [{"role": "user", "content": "Hi there"},
                                   {"role": "assistant", "content": "Hello! How can I help?"},
                                   {"role": "user", "content": "Tell me a joke."}]
    with pytest.raises(ValueError, match="empty assistant turn"):
        hh_messages("\n\nHuman: Hi\n\nAssistant: Hello")  # a whole dialogue, not a prompt


# ---- the run, shared by the tests below ----------------------------------------------------------------


@dataclass
class GRPORun:
    out: Path
    rm_dir: Path
    policy_dir: Path
    code: int
    completions: list[Any] = field(default_factory=list)  # one Completions per generate call (one per step)
    scored: list[tuple[list, list[str], Any]] = field(default_factory=list)  # (prompts, texts, rewards) per RM call


@pytest.fixture(scope="module")
def hh_files(tmp_path_factory) -> tuple[Path, Path]:
    """(32 HH-RLHF pairs, 4 HH-RLHF prompts: 2 single-turn, 2 multi-turn) as JSONL files of chat messages,
    the short ones of the harmless-base test split in file order."""
    from marginkit.data.load import load_pairs

    path = shared_data_dir() / HH
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (set MARGINKIT_SHARED_DATA)")
    pairs, _ = load_pairs(path, on_invalid="skip")
    short = [p for p in pairs if len(p.prompt) + max(len(p.chosen), len(p.rejected)) < 400]
    root = tmp_path_factory.mktemp("hh")
    train = root / "pairs.jsonl"
    train.write_text("".join(json.dumps({"prompt": hh_messages(p.prompt), "chosen": p.chosen, "rejected": p.rejected})
                             + "\n" for p in short[:32]))
    rest = [hh_messages(p.prompt) for p in short[32:] if len(p.prompt) < 250]
    prompts = [m for m in rest if len(m) == 1][:2] + [m for m in rest if len(m) == 3][:2]
    assert len(prompts) == 4
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": m}) + "\n" for m in prompts))
    return train, root / "prompts.jsonl"


@pytest.fixture(scope="module")
def grpo_run(smollm2_dir, hh_files, tmp_path_factory) -> GRPORun:
    from marginkit.cli import main
    from marginkit.models.generation import HFGenerator
    from marginkit.models.pretrained import minilm_dir
    from marginkit.rewards import RMFolderReward

    pairs, prompts = hh_files
    root = tmp_path_factory.mktemp("rl_pretrained")
    assert main(["train-rm", f"model.name_or_path={minilm_dir()}", f"data.train={pairs}",
                 "data.tokenize.max_length=128", "train.batch_size=8", "train.max_steps=3",
                 "train.learning_rate=1e-4", "train.log_every=1", "train.progress_bar=false",
                 f"train.output_dir={root / 'rm'}"]) == 0
    run = GRPORun(root / "grpo", root / "rm" / "model", smollm2_dir, code=-1)
    real_generate, real_score = HFGenerator.generate, RMFolderReward.__call__

    def generate(self, *args, **kwargs):
        run.completions.append(real_generate(self, *args, **kwargs))
        return run.completions[-1]

    def score(self, prompts_, texts):
        rewards = real_score(self, prompts_, texts)
        run.scored.append((list(prompts_), list(texts), rewards))
        return rewards

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HFGenerator, "generate", generate)
        mp.setattr(RMFolderReward, "__call__", score)
        run.code = main(["train-grpo", f"model.name_or_path={smollm2_dir}", f"reference.name_or_path={smollm2_dir}",
                         f"reward={run.rm_dir}", f"rollout.prompts={prompts}",
                         f"rollout.prompts_per_step={PROMPTS_PER_STEP}", f"rollout.num_generations={GENERATIONS}",
                         f"rollout.max_new_tokens={MAX_NEW}", f"train.max_steps={STEPS}",
                         "train.learning_rate=1e-5", "train.progress_bar=false", f"train.output_dir={run.out}"])
    return run


# ---- what the run must show --------------------------------------------------------------------------


@real_run
def test_grpo_on_smollm2_completes_with_finite_metrics(grpo_run):
    assert grpo_run.code == 0
    rows = metric_rows(grpo_run.out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        for key in ("reward", "kl", "entropy", "loss", "grad_norm", "completions/mean_length"):
            assert math.isfinite(row[key]), (row["step"], key, row[key])
        assert row["entropy"] > 0 and 0 < row["completions/mean_length"] <= MAX_NEW
        assert row["ratio"] == pytest.approx(1.0, abs=1e-5)  # one pass per rollout: sampled by the same weights
    print("seconds per step (rollout, update):",
          [(round(r["time/rollout_seconds"], 1), round(r["time/update_seconds"], 1)) for r in rows])
    assert rows[0]["kl"] < 1e-6  # step 1: the policy is its reference (same folder, dropout off)
    assert rows[-1]["kl"] > 0  # the updates moved the policy away from it
    assert len(grpo_run.completions) == len(grpo_run.scored) == STEPS


@real_run
def test_saved_policy_is_a_plain_folder_whose_weights_moved(grpo_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = AutoModelForCausalLM.from_pretrained(grpo_run.out / "model").state_dict()
    start = AutoModelForCausalLM.from_pretrained(grpo_run.policy_dir).state_dict()
    assert trained.keys() == start.keys()
    moved = max(float((trained[k] - start[k]).abs().max()) for k in start)
    assert 0 < moved < 1e-3  # lr 1e-5, 2 AdamW steps: each weight moves by about 1e-5 per step at most
    tok = AutoTokenizer.from_pretrained(grpo_run.out / "model")
    assert tok.chat_template and len(tok) == 49152 and tok.eos_token == "<|im_end|>"  # no token added


@real_run
def test_rollout_uses_the_chat_template_and_ends_at_im_end(grpo_run):
    """Each rollout row is its prompt rendered by SmolLM2's chat template (system turn, user/assistant turns,
    the assistant header), left-padded, then the completion; a completion that ends, ends at <|im_end|> (the
    token the template closes an assistant turn with), and its text is the decoded tokens before it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(grpo_run.policy_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    closed = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                     tokenize=False)
    assert closed.endswith("Hello<|im_end|>\n") and tok.eos_token_id == im_end  # the EOS generation stops at
    texts, ended = [], 0
    for comp, (prompts, step_texts, _) in zip(grpo_run.completions, grpo_run.scored):
        assert step_texts == comp.texts
        for i, messages in enumerate(prompts):
            real = comp.attention_mask[i].bool()
            prompt_ids = comp.input_ids[i][real & ~comp.completion_mask[i].bool()].tolist()
            rendered = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            assert prompt_ids == tok(rendered, add_special_tokens=False)["input_ids"]
            assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
            assert all(m["content"] in rendered for m in messages)
            new = comp.input_ids[i][comp.completion_mask[i].bool()].tolist()
            assert len(new) == int(comp.lengths[i])
            if not comp.truncated[i]:
                assert new[-1] == im_end and im_end not in new[:-1]
                ended += 1
                new = new[:-1]
            else:
                assert im_end not in new and len(new) == MAX_NEW
            assert comp.texts[i] == tok.decode(new, skip_special_tokens=True).strip()
        texts += comp.texts
    assert sum(bool(t) for t in texts) >= 0.75 * len(texts), texts  # decoded real text, not empty strings
    print(f"{ended} of {len(texts)} completions ended at <|im_end|> within {MAX_NEW} tokens: {texts}")


@pytest.fixture(scope="module")
def start_policy(smollm2_dir) -> tuple[Any, Any]:
    """(SmolLM2, its tokenizer) as train-grpo loads the policy at step 0."""
    from marginkit.models.policy import PolicyConfig, load_policy

    model, tok = load_policy(PolicyConfig(name_or_path=str(smollm2_dir)))
    return model.eval(), tok


@real_run
def test_generator_stops_at_im_end(start_policy):
    """A reply shorter than max_new_tokens ends at <|im_end|>, is not counted as truncated, and its text is
    the reply (nearly greedy: SmolLM2 answers this one with a short sentence, as chat_smoke_test checks)."""
    from marginkit.models.generation import HFGenerator

    model, tok = start_policy
    prompt = ({"role": "user", "content": "What is the capital of France? Answer in one sentence."},)
    comp = HFGenerator(model, tok).generate([prompt], 1, 24, 0.1, seed=0)
    new = comp.input_ids[0][comp.completion_mask[0].bool()].tolist()
    assert not comp.truncated[0] and new[-1] == tok.convert_tokens_to_ids("<|im_end|>") and len(new) < 24
    assert "Paris" in comp.texts[0] and "<|im_end|>" not in comp.texts[0]


@real_run
def test_left_padded_rows_read_their_unpadded_logps(grpo_run, start_policy):
    """The first rollout (sampled by the start weights): under left padding, with SmolLM2's rotary positions
    and attention mask, every row's completion log-probs equal those of the row alone."""
    from marginkit.models.generation import completion_logps

    comp = grpo_run.completions[0]
    assert (comp.attention_mask[:, 0] == 0).any()  # prompts of different lengths: some rows are left-padded
    model, _ = start_policy
    with torch.no_grad():
        batched = completion_logps(model, comp.input_ids, comp.attention_mask, comp.completion_mask)
        for i in range(len(comp)):
            real = comp.attention_mask[i].bool()
            alone = completion_logps(model, *(t[i][real][None] for t in (comp.input_ids, comp.attention_mask,
                                                                           comp.completion_mask)))
            torch.testing.assert_close(batched.logps[i][batched.mask[i]], alone.logps[0][alone.mask[0]],
                                       atol=2e-4, rtol=1e-4)


@real_run
def test_rm_scored_the_decoded_completions_at_cls(grpo_run):
    """Each step's logged reward is the mean of what the MiniLM RM gave that step's completion texts; each
    reward, scored two completions per padded slot, equals an unbatched forward of its (prompt, completion)
    encoded as the RM was trained (its saved tokenize settings), read at [CLS] (the pre-flight check)."""
    from marginkit.configlib import from_dict
    from marginkit.data.collate import collate_pairs
    from marginkit.data.ledger import Ledger
    from marginkit.data.schema import Pair
    from marginkit.data.tokenize import TokenizeConfig, encode_pair
    from marginkit.diagnostics.preflight import check_reward_tokens
    from marginkit.models.reward import ModelConfig, is_encoder, load_reward_model, load_scorer_settings

    rows = metric_rows(grpo_run.out)
    for row, (_, _, rewards) in zip(rows, grpo_run.scored):
        assert row["reward"] == pytest.approx(float(rewards.mean()), rel=1e-6, abs=1e-9)
    model, tok = load_reward_model(ModelConfig(name_or_path=str(grpo_run.rm_dir), head_init="keep"))
    model.eval()
    assert is_encoder(model)
    cfg = from_dict(TokenizeConfig, load_scorer_settings(grpo_run.rm_dir)["tokenize"])
    prompts, texts, rewards = grpo_run.scored[0]
    encoded = [encode_pair(Pair(p, t, t), i, tok, cfg, Ledger(), True) for i, (p, t) in enumerate(zip(prompts, texts))]
    with torch.no_grad():
        alone = [float(model(input_ids=torch.tensor([e.chosen_ids])).logits) for e in encoded]
    assert alone == pytest.approx(list(rewards), abs=1e-5)
    assert len(set(rewards.tolist())) > 1  # the trained head tells completions apart: the advantages are not all 0
    report = check_reward_tokens(collate_pairs(encoded, tok.pad_token_id), tok, encoder=True)
    assert report.tokens_seen == {"[CLS]": 2 * len(encoded)}
