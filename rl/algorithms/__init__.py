"""RL algorithms, one file each, stating its advantage (or pairing) and its loss.

Policy gradient (the RL stage, `rl.algorithm`): grpo, rloo, reinforce_pp. Preference
optimisation (the DPO stage, `dpo`): dpo.
"""

from __future__ import annotations

from rl.algorithms.grpo import GRPO
from rl.algorithms.policy import PolicyGradient
from rl.algorithms.reinforce_pp import ReinforcePP
from rl.algorithms.rloo import RLOO

POLICY_GRADIENT: dict[str, type[PolicyGradient]] = {"grpo": GRPO, "rloo": RLOO, "reinforce_pp": ReinforcePP}


def policy_gradient(name: str, clip_low: float, clip_high: float, kl_coef: float) -> PolicyGradient:
    """The algorithm `name` (a key of POLICY_GRADIENT) with its loss settings."""
    return POLICY_GRADIENT[name](clip_low=clip_low, clip_high=clip_high, kl_coef=kl_coef)
