"""Typed configs: dataclasses, YAML files, dotted overrides (``train.steps=500``).

A config is named (a shipped YAML in robopolicy/configs/) or a path. Values are checked against the
dataclass types by OmegaConf: a typo or a wrong type is one clear ConfigError, never a silent default.
Nothing here reads sys.argv; the CLI passes overrides in.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from robopolicy.errors import ConfigError
from robopolicy.heads.config import DiffusionHeadConfig, EBTHeadConfig, PTPHeadConfig
from robopolicy.models.config import EncoderConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    obs_keys: list[str] = field(default_factory=list)  # empty: every image key plus "state"
    action_key: str = "action"
    n_obs: int = 2  # To
    horizon: int = 16  # H
    stride: int = 1  # s
    past_act: bool = False  # also feed the action executed before each frame (PTP's past-actions-as-input ablation)
    n_action_steps: int = 8  # Ta: actions executed per chunk
    val_fraction: float = 0.1
    batch_size: int = 64
    num_workers: int = 0  # 0: batches from RAM in the main process; > 0: streamed by worker processes
    obs_min_span: float = 0.01  # low-dim dimensions varying less than this are not stretched to [-1, 1]


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6  # on the head's weight matrices (biases, norms, position embeddings: none)
    encoder_weight_decay: float = 1e-6
    warmup_steps: int = 500
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    steps: int = 2000
    minutes: float = 0.0  # a training wall-clock budget (summed over resumes); 0: none. The LR schedule
    # then runs on whichever of steps or time is further along, so a budgeted run still anneals
    seed: int = 0
    ema_power: float = 0.75
    ema_max: float = 0.9999
    log_every: int = 50
    checkpoint_every: int = 1000
    device: str = "auto"  # "auto": CUDA when there is one
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; or "bf16" / "fp32"
    compile: bool = False  # torch.compile the model (worth it for long GPU runs)
    tensorboard: bool = True  # scalars in <out>/tensorboard
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class PolicyConfig:
    head: str = "diffusion"  # a head of robopolicy.heads.HEADS ("diffusion", "ptp", "ebt"): it reads its section below
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    freeze_encoder: bool = False  # set by training on cached embeddings: the encoder that made them, frozen
    diffusion: DiffusionHeadConfig = field(default_factory=DiffusionHeadConfig)
    ptp: PTPHeadConfig = field(default_factory=PTPHeadConfig)
    ebt: EBTHeadConfig = field(default_factory=EBTHeadConfig)


@dataclass
class EvalConfig:
    """Rollouts during training (TensorBoard ``eval/<task>/success``), on the EMA weights of that step.
    They show progress; reported numbers come from ``robopolicy eval`` on the final EMA checkpoint."""

    every: int = 0  # steps between evaluations; 0: none
    suite: str = ""  # a suite name or YAML path; "": the task the training store was collected in
    episodes: int = 10  # per task
    workers: int = 2
    samples: int = 1  # K candidates per chunk


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> Config:
    """A shipped config by name, a YAML path, or ``base`` (a saved config dict), then dotted overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    layers = [OmegaConf.structured(Config)]
    if base is not None:
        layers.append(OmegaConf.create(base))
    if name_or_path is not None:
        path = Path(name_or_path)
        if not path.suffix:
            path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"no config {name_or_path!r}: shipped configs are {', '.join(shipped_configs())}, "
                              "or pass the path of a YAML file")
        layers.append(OmegaConf.load(path))
    try:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides look like key.sub=value, got {bad}")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as e:
        key, problem = getattr(e, "full_key", None), str(e).splitlines()[0]
        expected = _field_type(key) if key else None
        raise ConfigError(f"config: {key}: {problem}" + (f" ({key} takes {expected})" if expected else "")
                          if key else f"config: {problem}") from None


def _field_type(key: str) -> str | None:
    """The declared type of a dotted config key (``train.steps`` -> ``int``), for error messages."""
    import dataclasses
    import typing

    hint = Config
    for part in key.split("."):
        hints = typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else {}
        if part not in hints:
            return None
        hint = hints[part]
    return hint.__name__ if isinstance(hint, type) else str(hint)
