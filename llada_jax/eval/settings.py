"""What the harness model does with a request: Monte Carlo and decoding settings, checked in one place."""
from __future__ import annotations

import dataclasses
import math

from llada_jax.inference.likelihood import ESTIMATORS

DEFAULT_GEN_LENGTH = 256  # generate_until's length when neither --gen-length nor the task's max_gen_toks says


@dataclasses.dataclass
class EvalSettings:
    """Per-task knobs. Defaults are the project's (unbiased estimator); presets.py holds the official ones."""
    mc_num: int = 128             # Monte Carlo samples per answer
    mc_batch_size: int = 16       # samples per stratified mini-batch (the official --batch_size)
    cfg_scale: float = 0.0
    estimator: str = "unbiased"   # or "official" (half-to-even rounding of the stratified shift)
    check_greedy: bool = False    # also report whether greedy decoding reproduces the answer
    rows_per_pass: int | None = None  # Monte Carlo rows (of any requests) per forward pass; None: 32 on CPU, 256 else
    gen_length: int | None = None    # tokens to generate; None: the task's max_gen_toks, else DEFAULT_GEN_LENGTH
    steps: int | None = None         # None: one reverse-process step per generated token
    block_length: int | None = None  # None: one block of the whole length
    temperature: float = 0.0
    remasking: str = "low_confidence"
    threshold: float | None = None   # parallel decoding: reveal every token above this confidence
    factor: float | None = None      # parallel decoding, Fast-dLLM's factor rule
    cache: str = "auto"              # sampler KV cache: none, prefix, dual, exact (block diffusion); auto: none / exact
    gen_batch_size: int = 16      # prompts decoded together
    seed: int = 0

    def check(self) -> "EvalSettings":
        """One sentence per mistake, naming the setting and the fix."""
        from llada_jax.config import ConfigError
        from llada_jax.inference.sampling import check_options

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{field.name}={value} is not a finite number; give a real value")
        for name in ("mc_num", "mc_batch_size", "rows_per_pass", "gen_batch_size", "gen_length", "steps",
                     "block_length"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator={self.estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")
        if self.cfg_scale < 0 or self.temperature < 0:
            raise ConfigError(f"cfg_scale={self.cfg_scale} and temperature={self.temperature} must be >= 0")
        check_options(self.remasking, self.temperature, self.cfg_scale, self.threshold, self.factor, self.cache)
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold={self.threshold} is not a confidence; give a value in (0, 1], e.g. 0.9")
        if self.gen_length is not None:  # else the schedule is checked per task, against the task's length
            self.schedule(None)
        return self

    def schedule(self, task_length: int | None) -> tuple[int, int, int]:
        """(gen_length, steps, block_length) for a task that asks for `task_length` new tokens (its max_gen_toks;
        None if it does not say): the flags win, then the task's length, then DEFAULT_GEN_LENGTH; steps and the
        block follow the length unless given."""
        from llada_jax.inference.sampling import check_schedule

        length = self.gen_length or task_length or DEFAULT_GEN_LENGTH
        schedule = (length, self.steps or length, self.block_length or length)
        check_schedule(*schedule)
        return schedule

    def replace(self, **changes) -> "EvalSettings":
        """A copy with the changes that are not None, checked."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).check()


def parse_value(name: str, text: str):
    """A model_args string ('cfg_scale=0.5' from lm_eval's --model_args) converted to the field's type."""
    from llada_jax.config import ConfigError

    fields = {f.name: f for f in dataclasses.fields(EvalSettings)}
    if name not in fields:
        raise ConfigError(f"{name} is not a llada_jax eval setting; use one of {', '.join(fields)}")
    default = fields[name].default
    if isinstance(text, str) and text.lower() == "none" and default is None:
        return None
    kind = {"threshold": float, "factor": float}.get(name, int) if default is None else type(default)
    try:
        if kind is bool:
            if str(text).lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return str(text).lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a valid {kind.__name__}") from None
