"""How a policy acts on a window: the one set of options ``Policy.act``, the wire protocol, the evaluation plan
and the control loop share, so a served policy does whatever an evaluated one does. (How chunks are scheduled
in time, replan / ensemble / rtc, is the loop's ``strategy``: only a caller that executes chunks on a clock has
one.) No torch: the robot's side builds these too."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from robopolicy.errors import ConfigError

MAX_K = 64


@dataclass(frozen=True)
class Acting:
    k: int = 1  # candidates per chunk; the verifier executes the best one where it has evidence (verify.py)
    # the verifier's score as live uncertainty acted on (off by default): a chunk whose best candidate scores above
    # ``retry_above`` (EBT: its energy) is drawn again, up to ``retries`` times, the best of all draws executed ...
    retry_above: float | None = None
    retries: int = 1
    # ... and, for heads that refine (EBT), one above ``refine_above`` is optimized ``refine_steps`` steps more
    # before the verifier picks (applied before retry_above)
    refine_above: float | None = None
    refine_steps: int = 4
    inpaint_past: bool = False  # an experiment: the executed past inpainted at the chunk's past tokens

    def __post_init__(self):
        problems = []
        if not _integer(self.k) or not 1 <= self.k <= MAX_K:
            problems.append(f"k must be an integer in [1, {MAX_K}], got {self.k!r}")
        for name in ("retry_above", "refine_above"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                      or not math.isfinite(value)):
                problems.append(f"{name} must be a finite number or None, got {value!r}")
        if not _integer(self.retries) or self.retries < 0:
            problems.append(f"retries must be an integer >= 0, got {self.retries!r}")
        if not _integer(self.refine_steps) or self.refine_steps < 1:
            problems.append(f"refine_steps must be an integer >= 1, got {self.refine_steps!r}")
        if not isinstance(self.inpaint_past, bool):
            problems.append(f"inpaint_past must be true or false, got {self.inpaint_past!r}")
        if problems:
            raise ConfigError("acting options: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """The options that differ from the defaults (what a request or a record carries)."""
        default = Acting()
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}

    @classmethod
    def from_dict(cls, values: dict) -> Acting:
        """Acting from a request or a record; ConfigError naming an unknown or bad option."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown acting options {sorted(unknown)} (known: {[f.name for f in fields(cls)]})")
        return cls(**values)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
