"""The margin study on real preference data: `marginkit study margins --task hh|ultrafeedback|alpaca-eval`.

The gold-reward world (study/margins.py) says what is true when the answer is known; this study says
what a user gets on real human / judge preferences with a real pretrained backbone (all-MiniLM-L6-v2).
Per task, every margin variant is trained over the same seeds on the same splits, and measured on:

- held-out accuracy against the data's own labels (the human choice, the higher UltraFeedback score,
  the judge's preferred response), ties 1/2; on graded data also by |label gap| quartile;
- the skewness of the held-out reward-gap distribution (the confidence paper's "right-shift");
- out-of-distribution sections, RewardBench-style (evaluate/sections.py: FineGrainedRLHF QA, MT-Bench
  and Vicuna GPT-4-graded pairs), one accuracy per section and their mean;
- on AlpacaEval, the offline Best-of-N on held-out instructions (evaluate/offline_bon.py): the judge's
  probability of each variant's pick, its win rate over BT's pick, length-controlled, and how often
  the pick is simply the longest.

Intervals are 95% Student-t intervals over seeds; "vs BT" is the paired difference (same seed, same
split, same initial weights). Each family's default is the variant with the best mean *validation*
accuracy; test numbers never choose.

Two backbones:

- `frozen` (what `--quick` runs): the MiniLM encoder is frozen and run once per distinct
  (prompt, response) text; its features ([CLS] state and masked mean of the last hidden states,
  768 numbers, cached on disk by encoder fingerprint, max_length and text) feed a two-layer reward
  head trained from scratch: r = w2 · gelu(W1 standardise(f) + b1) + b2, w2 and b2 zero-initialised
  so every loss starts at ln 2. The head's step is rm_step's step (same bt_loss, same strategies,
  same MarginInputs; OT's "hidden" embeddings are the head's 256-wide hidden layer), so a run takes
  seconds and five seeds of every variant fit in minutes on a CPU.
- `finetune`: the whole MiniLM is fine-tuned by `train_reward_model` (train-rm's code path) and
  scored as eval-rm scores; about 2.5 minutes per 1,000 pairs at 128 tokens on 2 CPU cores.

Reference margins (confidence with source=reference / ensemble) come from the BT runs of the same
seed (and `ensemble_size - 1` more BT runs differing only by seed), trained once per seed and reused
by every variant that needs them. Results append to results.jsonl (and bon.jsonl) as each run ends,
so an interrupted study resumes; summary.json, study.md and plots are rebuilt from all rows.
"""

from marginkit.study.real.config import REAL_SIZES, TASKS, RealStudyConfig, default_data_dir, sized_config
from marginkit.study.real.data import TaskData, load_sections, load_task
from marginkit.study.real.features import FeatureCache
from marginkit.study.real.head import RewardHead, head_gaps, head_step, train_head, tune_head
from marginkit.study.real.report import format_real_markdown
from marginkit.study.real.runner import run_real_study
from marginkit.study.real.summary import paired_pair_bootstrap, summarize_real, win_bootstrap

__all__ = ["RealStudyConfig", "TASKS", "REAL_SIZES", "sized_config", "default_data_dir", "TaskData", "load_task",
           "load_sections", "FeatureCache", "RewardHead", "head_step", "train_head", "head_gaps", "tune_head",
           "run_real_study", "summarize_real", "paired_pair_bootstrap", "win_bootstrap", "format_real_markdown"]
