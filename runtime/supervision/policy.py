"""What to do about a lost actor: a decision, which the supervisor carries out.

The policy is plain logic over counts, so it is tested without Ray. Today's rules: replace a
lost actor while its role has replacements left (`supervision.max_replacements`); past that, fail
the run with a RunFailed that says which role and how often it was lost. A role that keeps dying
is a bug or a bad node, not a fault worth hiding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Decision:
    action: Literal["replace", "fail"]
    reason: str


class Policy:
    def __init__(self, max_replacements: int):
        self.max_replacements = max_replacements
        self.replaced: dict[str, int] = {}

    def decide(self, role: str, name: str, fault: str) -> Decision:
        """`fault`: died or hung. Counts the replacement it grants."""
        done = self.replaced.get(role, 0)
        if done >= self.max_replacements:
            return Decision("fail", f"{name} {fault}; role {role} was already replaced {done} times "
                                    "(supervision.max_replacements): giving up")
        self.replaced[role] = done + 1
        return Decision("replace", f"{name} {fault}")
