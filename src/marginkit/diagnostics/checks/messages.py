"""The monitor's message table: for each check, what happened (with the values), why, and what to do.

One entry per check, filled from the check's `Finding` (its `values` and `fields`; `variant` picks the
phrase `{how}` where a check has two ways to fire). The rendered message is the alert's `message`, shown on
the console and written to alerts.jsonl; docs/monitor.md explains each check at length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from marginkit.diagnostics.checks.window import Finding

__all__ = ["MESSAGES", "Message", "render"]


@dataclass(frozen=True)
class Message:
    """`what`: what happened, with the values; `why`: what it means or its likely causes; `fix`: what to do.
    Templates use str.format fields from the finding's values and fields (e.g. `{loss:.4f}`); `how` maps a
    finding's variant to the phrase filled in for `{how}`."""

    what: str
    why: str
    fix: str
    how: Mapping[str, str] = field(default_factory=dict)


MESSAGES: Mapping[str, Message] = MappingProxyType({
    "first_step": Message(
        what="first-step loss {loss:.4f} differs from its expected initial value {expected:.4f}.",
        why="Before any update the loss is fixed by the setup: ln 2 = 0.6931 for DPO with policy = reference and "
            "for BT with a zero reward head, softplus(m) averaged over pairs with margins m, the loss's own value "
            "for IPO or hinge. Likely causes: the reference model differs from the policy (another checkpoint, "
            "dtype, or dropout active in the policy but not the reference); the loss mask covers prompt or padding "
            "tokens or is not shifted by one (run the mask audit); the reward head is not zero-initialised or the "
            "reward is read at the wrong token (pre-flight check); a wrong beta or loss variant.",
        fix="Fix the setup before training further."),
    "stuck": Message(
        what="training is stuck: for {steps:.0f} steps the loss has stayed at {loss:.4f} ({anchor}) with gradient "
             "norm {grad_norm:.2e}, so nothing is learning.",
        why="Likely causes: beta = 0 (DPO); the reference model is the trained model itself (shared weights keep "
            "every log-ratio at 0); frozen parameters (requires_grad False, or an optimizer built before "
            "unfreezing); gradients lost to a .detach() or torch.no_grad() around the forward; chosen and rejected "
            "identical, or an RM reward read at the same token for both (see the pre-flight check).",
        fix="Fix the cause; a higher learning rate will not help when the gradient is zero."),
    "slow_start": Message(
        what="learning has not started: for {steps:.0f} steps the loss has stayed at {loss:.4f} and the mean reward "
             "gap at {reward_gap:.1e}, although the gradient norm is {grad_norm:.2e}.",
        why="This is not a normal ln 2 plateau. The usual cause is a zero-initialised reward head "
            "(model.head_init=zero) with a small learning rate: Adam moves each head weight by about lr per step, "
            "and the backbone gets almost no gradient until the head has grown (a MiniLM RM at lr 2e-5 ended one "
            "epoch at chance).",
        fix="Use model.head_init=normal, a larger learning rate (or warm-up that reaches it), or more steps."),
    "explosion": Message(
        what="margin explosion: {name} = {gap:.1f} is {how} while loss = {loss:.4f} and accuracy = "
             "{rewards/accuracies:.2f}.",
        why="This looks like convergence but is reward hacking: the policy drives the rejected responses' "
            "probability towards 0 (or the RM pushes its scores apart) and memorises the pairs (seed 001: 56.9, "
            "240.7, 599.2 at steps 30, 70, 150 with batch size 1).",
        fix="Fixes: larger batches (more pairs per optimizer step, or gradient accumulation), a larger beta, a "
            "bounded loss such as IPO, a lower learning rate; for an RM, reward centering and early stopping on "
            "eval accuracy.",
        how={"above": "beyond the healthy range (about 1-10; alert above {max_gap:g})",
             "growth": "{ratio:.1f}x its value {window} steps ago"}),
    "chosen_logps": Message(
        what="chosen log-probs are falling steadily: logps/chosen fell by {drop:.1f} nats over the last {window} "
             "steps (correlation with the step {correlation:.2f}) while {name} grew by {rise:.1f}.",
        why="The margin is being won by pushing both responses down, the rejected one faster (likelihood "
            "displacement), so the policy is moving probability to responses outside the data.",
        fix="Fixes: add the NLL term on chosen responses, lower the learning rate, raise beta, use larger batches, "
            "or a conservative loss (IPO, label smoothing)."),
    "reward_scale": Message(
        what="reward scale blow-up: the mean reward magnitude {scale:.1f} (chosen {rewards/chosen:.1f}, rejected "
             "{rewards/rejected:.1f}) is {how}.",
        why="BT only constrains reward differences, so nothing stops rewards drifting together; a steady drift "
            "often means the reward is read at a padding position and depends on length (a padding-side bug: "
            "check data.padding_side and the pre-flight report).",
        fix="Fixes: reward centering (loss.center_rewards_coefficient=0.01), a lower learning rate, and a check of "
            "where the reward token is.",
        how={"above": "above {max_abs:g}", "growth": "{ratio:.1f}x its value {window} steps ago"}),
    "margin_gap": Message(
        what="target margins are far larger than the gaps the model produces: mean margin {margin:.2f} over active "
             "pairs against a mean reward gap of {rewards/margins:.2f}, with m > gap on {exceeds_fraction:.0%} of "
             "active pairs, for {steps:.0f} steps.",
        why="Margins the model cannot reach keep every pair in the high-loss regime and push reward scores apart "
            "without bound, which destabilises them (Wang et al. 2024, 'Secrets of RLHF Part II').",
        fix="Fixes: lower the margin scale, clip the margins, warm them up, or filter which pairs get a margin (the "
            "confidence margin's below-batch-mean filter)."),
    "kl_blowup": Message(
        what="KL blow-up: the per-token KL to the reference is {kl:.3f} nats, {how}.",
        why="The policy has moved far from its reference, usually by exploiting the reward (longer or degenerate "
            "completions the reward model over-scores); past a few nats per token the samples rarely read like the "
            "reference's any more.",
        fix="Fixes: a larger beta (loss.beta), a lower learning rate, fewer optimisation passes per rollout "
            "(loss.num_iterations), a tighter clip range, or stop at an earlier checkpoint.",
        how={"above": "above {max_kl:g} for {steps} steps", "growth": "{ratio:.1f}x its value {window} steps ago"}),
    "reward_hacking": Message(
        what="reward hacking: over the last {window} steps the trained-on reward rose by {rise:.3f} (now {reward:.3f}) "
             "while gold/reward fell by {fall:.3f} (now {gold/reward:.3f}).",
        why="The policy is exploiting the reward model's errors (over-optimisation, Gao et al. 2022): what it is "
            "paid for and what is actually good have come apart; the KL to the reference usually grows with it.",
        fix="Fixes: stop here or keep an earlier checkpoint (the gold reward's peak), raise beta, lower the learning "
            "rate, or train a better reward model (more data, margins, an ensemble)."),
    "entropy_collapse": Message(
        what="entropy collapse: the mean token entropy is {entropy:.4f} nats, {how}, for {steps:.0f} steps.",
        why="Sampling has become almost deterministic: the completions of a group look alike, the group baselines "
            "see no reward spread (frac_reward_zero_std rises) and the policy stops exploring.",
        fix="Fixes: a lower learning rate, a larger beta, a higher rollout.temperature, fewer optimisation passes "
            "per rollout, or an entropy bonus.",
        how={"floor": "below {min_entropy:g}", "fraction": "{fraction:.1%} of its step-1 value {entropy@1:.4f}"}),
    "length_collapse": Message(
        what="completion lengths have collapsed: {how} (min {completions/min_length:.0f}, max "
             "{completions/max_length:.0f} tokens) for {steps:.0f} steps.",
        why="The policy has found one length the reward favours (an RM that prefers long answers pushes every "
            "completion to max_new_tokens); the length, not the content, is being optimised.",
        fix="Fixes: check the reward for a length bias (score truncated and short completions), a length penalty or "
            "length-normalised reward, a larger beta, a larger rollout.max_new_tokens if answers are cut.",
        how={"spread": "every completion has the same length", "cap": "every completion hits the max_new_tokens cap"}),
})


def render(check: str, finding: Finding) -> str:
    """The alert message of `check` for `finding`: what, why and fix, filled and joined by spaces."""
    msg = MESSAGES[check]
    fields = {**finding.values, **finding.fields}
    if msg.how:
        fields["how"] = msg.how[finding.variant].format(**fields)
    return " ".join(part.format(**fields) for part in (msg.what, msg.why, msg.fix))
