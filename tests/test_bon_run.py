"""`marginkit bon` pipeline (evaluate/bon_run.py, evaluate/sampling.py): reproducible sampling, scoring
exactly as eval-rm, caching (a second RM neither resamples nor rescores the first), CLI."""

import json

import numpy as np
import pytest
import torch

from conftest import resolve_dotted
from marginkit.cli import main
from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.data.world import WorldConfig, make_world
from marginkit.evaluate import bon_run
from marginkit.evaluate.bon import best_of_n_sweep
from marginkit.evaluate.bon_run import BonConfig, combine_runs, format_tables, run_bon, score_samples
from marginkit.evaluate.sampling import SampleSet, SamplingConfig, read_prompts, sample_hf, sample_world
from marginkit.evaluate.scorer import score_encoded
from marginkit.models.reward import ModelConfig, load_reward_model, save_reward_model
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(seed=0, n_train=1, n_val=0, n_test=0))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, world):
    tok = build_word_tokenizer(world.vocabulary())
    return make_tiny_model_dir(tmp_path_factory.mktemp("bon") / "lm", tok, hidden_size=16, num_layers=1,
                               num_heads=2, max_positions=96)


def _rm(lm_dir, out, seed):
    """A tiny RM with a random (normal) head: different seeds rank samples differently."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, tok = load_reward_model(ModelConfig(name_or_path=str(lm_dir), head_init="normal"))
    save_reward_model(model, tok, out, {"tokenize": {"max_length": 96}, "padding_side": "right"})
    return out


@pytest.fixture(scope="module")
def rms(tmp_path_factory, lm_dir):
    root = tmp_path_factory.mktemp("rms")
    return _rm(lm_dir, root / "bt" / "model", 1), _rm(lm_dir, root / "margin" / "model", 2)


def test_world_sampling_reproducible_by_seed(world):
    prompts = world.sample_prompts(3, seed=0)
    a, b = sample_world(world.policy, prompts, 8, seed=1), sample_world(world.policy, prompts, 8, seed=1)
    assert a == b and len(a) == 3 and all(len(r) == 8 for r in a)
    assert sample_world(world.policy, prompts, 8, seed=2) != a
    assert [r[:4] for r in a] == sample_world(world.policy, prompts, 4, seed=1)  # first 4 of 8 = the 4 of n=4


def test_hf_sampling_reproducible_by_seed(lm_dir, world):
    from marginkit.evaluate.sampling import load_policy_lm

    model, tok = load_policy_lm(lm_dir, "cpu")
    prompts = world.sample_prompts(2, seed=0)
    cfg = SamplingConfig(max_new_tokens=6, batch_size=3)  # 5 samples = calls of 3 and 2
    state = torch.get_rng_state()
    a = sample_hf(model, tok, prompts, 5, seed=3, cfg=cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert a == sample_hf(model, tok, prompts, 5, seed=3, cfg=cfg)
    assert len(a) == 2 and all(len(r) == 5 for r in a) and len({t for r in a for t in r}) > 2
    assert sample_hf(model, tok, prompts, 5, seed=4, cfg=cfg) != a
    # A prompt's samples do not depend on the other prompts.
    assert sample_hf(model, tok, prompts[1:], 5, seed=3, cfg=cfg) == a[1:]


def test_score_samples_equals_the_eval_rm_scorer(rms, world):
    model, tok = load_reward_model(ModelConfig(name_or_path=str(rms[0]), head_init="keep"))
    prompts = world.sample_prompts(3, seed=0)
    samples = sample_world(world.policy, prompts, 5, seed=0)
    samples[2][3] = samples[2][1]  # a repeated response: scored once, same score
    sset = SampleSet(prompts, samples, 0, {"kind": "test"})
    tok_cfg = TokenizeConfig(max_length=96)
    got = score_samples(model, tok, sset, tok_cfg, "right", False, batch_size=2)  # [3, 5]
    assert got.shape == (3, 5) and got[2, 3] == got[2, 1]
    # eval-rm's path: each sample as the chosen side of a pair (against the prompt's first sample).
    pairs = [Pair(p, s, row[0]) for p, row in zip(prompts, samples) for s in row]
    chosen, _ = score_encoded(model, encode_pairs(pairs, tok, tok_cfg, Ledger()), tok.pad_token_id, "right", 4)
    torch.testing.assert_close(torch.tensor(got.ravel(), dtype=torch.float32),
                               torch.tensor(chosen, dtype=torch.float32))
    assert np.ptp(got) > 0  # the head is random, not zero: the comparison is not 0 == 0


def _cfg(tmp_path, rm_paths, **kw):
    return BonConfig(rms=[str(p) for p in rm_paths], ns=[1, 2, 4], n_prompts=6, seed=0, out=str(tmp_path / "bon"),
                     n_boot=50, batch_size=8, progress=False, **kw)


def test_second_rm_reuses_samples_and_scores(tmp_path, rms, world, monkeypatch):
    first = run_bon(_cfg(tmp_path, rms[:1]), say=lambda s: None)
    calls = []
    real = bon_run.score_samples

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    def no_sampling(*args, **kwargs):
        raise AssertionError("the samples were drawn again")

    monkeypatch.setattr(bon_run, "score_samples", counting)
    monkeypatch.setattr(bon_run, "sample_world", no_sampling)
    said = []
    second = run_bon(_cfg(tmp_path, rms), say=said.append)
    assert len(calls) == 1  # only the new RM was scored
    assert any("samples: reusing" in s for s in said) and any("scores [bt]: reusing" in s for s in said)
    assert second["per_rm"]["bt"] == first["per_rm"]["bt"]
    assert [w["value"] for w in second["win_rates"]["margin"]][0] == 0.5  # N = 1: same sample, a tie
    out = tmp_path / "bon"
    assert {p.name for p in out.iterdir()} >= {"bon_results.json", "bon_table.md", "bon_curves.png",
                                               "bon_win_rates.png", "cache"}
    # End to end: the judge mean at N=k is the true reward of argmax over the first k cached scores.
    sset = SampleSet.load(next((out / "cache" / "samples").glob("*.json")))
    scores = np.load(next(p for p in (out / "cache" / "scores").glob("*.npy")
                          if bon_run.fingerprint_dir(rms[1]) in p.name))
    true = np.array([[world.true_reward(p, s) for s in row] for p, row in zip(sset.prompts, sset.samples)])
    for i, k in enumerate([1, 2, 4]):
        expected = np.mean([true[p, max(range(k), key=lambda j, p=p: (scores[p, j], -j))] for p in range(6)])
        assert second["per_rm"]["margin"]["judge"][i]["mean"] == pytest.approx(expected)


def test_rm_judge_and_lm_policy(tmp_path, rms, lm_dir, world):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in world.sample_prompts(3, seed=5)))
    cfg = _cfg(tmp_path, rms, policy=str(lm_dir), prompts=str(prompts), judge=str(rms[1]),
               sampling=SamplingConfig(max_new_tokens=5))
    d = run_bon(cfg, say=lambda s: None)
    assert d["policy"]["kind"] == "hf" and d["judge"]["kind"] == "rm" and d["n_prompts"] == 3
    # The judge judging its own picks gets its own best of N.
    assert [m["mean"] for m in d["per_rm"]["margin"]["judge"]] == pytest.approx(d["reference"]["judge_best"])


def test_cli_bon(tmp_path, rms, capsys):
    out = tmp_path / "cli"
    assert main(["bon", "--rm", f"base={rms[0]}", "--rm", str(rms[1]), "--n", "1,2,...,4", "--n-prompts", "4",
                 "--world-seed", "0", "--out", str(out), "--n-boot", "50", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| margin vs base |" in printed and "| 1 | 0.500 [0.500, 0.500] (0/4/0) |" in printed
    d = json.loads((out / "bon_results.json").read_text())
    assert d["ns"] == [1, 2, 4] and d["baseline"] == "base" and d["world"]["seed"] == 0
    assert main(["bon", "--rm", str(rms[0]), "--n", "1,2,4,...,50", "--out", str(out)]) == 2
    assert "--n '1,2,4,...,50'" in capsys.readouterr().err


def test_read_prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('"plain string"\n\n{"prompt": "an object"}\n'
                 '{"prompt": [{"role": "user", "content": "hi"}]}\n')
    assert read_prompts(f) == ["plain string", "an object", ({"role": "user", "content": "hi"},)]
    f.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r'p.jsonl row 1, field "prompt"'):
        read_prompts(f)


def test_combine_runs_by_hand():
    # Two runs whose N=2 win rates are 0.6 and 0.8 (5 prompts, 1 sample differs per win):
    # mean 0.7; sd (ddof 1) = 0.1 * sqrt(2); t_0.975 with 1 degree of freedom = 12.7062047;
    # half-width = 12.7062047 * 0.1 * sqrt(2) / sqrt(2) = 1.27062047.
    judge = np.array([[0.0, 1.0]] * 5)
    base = np.array([[1.0, 0.0]] * 5)  # always keeps sample 0 (judge 0)
    runs = []
    for wins in (1, 3):  # rm picks sample 1 (judge 1) on `wins` prompts: win rate (wins + 0.5 * (5 - wins)) / 5
        rm = np.array([[0.0, 1.0]] * wins + [[1.0, 0.0]] * (5 - wins))
        runs.append(best_of_n_sweep({"bt": base, "m": rm}, judge, [1, 2], n_boot=20).to_dict())
    assert [r["win_rates"]["m"][1]["value"] for r in runs] == pytest.approx([0.6, 0.8])
    d = combine_runs(runs)
    w = d["win_rates"]["m"][1]
    assert (w["value"], w["low"], w["high"]) == pytest.approx((0.7, 0.7 - 1.27062047, 0.7 + 1.27062047))
    assert (w["wins"], w["ties"], w["losses"]) == (4, 6, 0) and d["runs_above_half"]["m"] == [0, 2]
    # Paired judge difference: (1/5, 3/5) -> mean 0.4; N=1 is exactly 0 in both runs.
    assert d["judge_diff"]["m"][1]["mean"] == pytest.approx(0.4) and d["win_rates"]["m"][0]["value"] == 0.5
    assert "mean over 2 runs" in format_tables(d) and "2/2" in format_tables(d)
    with pytest.raises(ValueError, match="differ"):
        combine_runs([runs[0], best_of_n_sweep({"bt": base}, judge, [1, 2], n_boot=20).to_dict()])


def test_docs_name_real_flags_and_code():
    """docs/bon.md: every `--flag` in its options table is a flag of `marginkit bon`, and every dotted
    marginkit name it gives resolves."""
    import re
    from pathlib import Path

    from marginkit.cli import build_parser

    doc = (Path(__file__).resolve().parents[1] / "docs" / "bon.md").read_text()
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "bon")[1]
    flags = {s for a in sub._actions for s in a.option_strings}
    table = doc.split("## Options", 1)[1].split("##", 1)[0]
    named = set(re.findall(r"`(--[a-z-]+)`", table))
    assert named and named <= flags, named - flags
    assert flags - {"-h", "--help"} <= named, (flags - named)  # every flag is documented
    for dotted in set(re.findall(r"`(marginkit(?:\.[a-z_]+)+)`", doc)):
        resolve_dotted(dotted)
