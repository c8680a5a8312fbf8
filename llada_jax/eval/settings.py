"""What the harness model does with a request: Monte Carlo and decoding settings, checked in one place."""
from __future__ import annotations

import dataclasses

from llada_jax.inference.likelihood import ESTIMATORS


@dataclasses.dataclass
class EvalSettings:
    """Per-task knobs. Defaults are the project's (unbiased estimator); presets.py holds the official ones."""
    mc_num: int = 128             # Monte Carlo samples per answer
    mc_batch_size: int = 16       # samples per stratified mini-batch (the official --batch_size)
    cfg_scale: float = 0.0
    estimator: str = "unbiased"   # or "official" (half-to-even rounding of the stratified shift)
    check_greedy: bool = False    # also report whether greedy decoding reproduces the answer
    rows_per_pass: int | None = None  # Monte Carlo rows (of any requests) per forward pass; None: 32 on CPU, 256 else
    gen_length: int = 256
    steps: int = 256
    block_length: int = 256
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
        from llada_jax.inference.sampling import check_options, check_schedule

        for name in ("mc_num", "mc_batch_size", "rows_per_pass", "gen_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator={self.estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")
        if self.cfg_scale < 0 or self.temperature < 0:
            raise ConfigError(f"cfg_scale={self.cfg_scale} and temperature={self.temperature} must be >= 0")
        check_options(self.remasking, self.temperature, self.cfg_scale, self.threshold, self.factor, self.cache)
        check_schedule(self.gen_length, self.steps, self.block_length)
        return self

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
    try:
        if isinstance(default, bool):
            if str(text).lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return str(text).lower() in ("true", "1")
        if name in ("threshold", "factor") or isinstance(default, float):
            return float(text)
        return type(default)(text)
    except ValueError:
        kind = "float" if default is None else type(default).__name__
        raise ConfigError(f"{name}={text!r} is not a valid {kind}") from None
