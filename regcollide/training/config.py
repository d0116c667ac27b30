"""Training configuration: dataclasses with defaults, YAML loading, `--set` overrides, strict validation.

The shape follows nanoGPT's ``GPTConfig`` (a dataclass holds every default) and edm's
``training_options.json`` (the resolved config is written next to the results). Every check runs before
any work starts: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`, whose
one-line message names the key and, for a typo, the nearest valid key (``difflib``).

Example::

    cfg = load_config("configs/default.yaml", overrides=["train.epochs=3", "regularizers.0.weight=0.2"])
    cfg.train.lr          # typed float
    to_dict(cfg)          # plain dict, what the run folder's config.yaml holds
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import LoggerType

from regcollide.evaluation.settings import EvalSettings
from regcollide.training.validate import ConfigError, build, choices, fail, value_range


@dataclass
class ModelConfig:
    name: str = "mlp"                      # registry name, or timm:<name> / tv:<name>
    width: float = field(default=1.0, metadata=value_range(0.0, lo_open=True))
    num_classes: int | None = field(default=None, metadata=value_range(2))   # None: from the dataset
    in_chans: int | None = field(default=None, metadata=value_range(1))      # None: from the dataset
    img_size: int | None = field(default=None, metadata=value_range(1))      # None: from the dataset


@dataclass
class AugmentConfig:
    """Training-time augmentation, applied on the device to every training batch (``regcollide.data.augment``)."""

    crop_padding: int = field(default=0, metadata=value_range(0))   # random crop after zero padding; 0: off
    hflip: bool = False                                        # random horizontal flip with probability 1/2

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip


@dataclass
class DataConfig:
    spec: str = "mnist5k"                  # mnist5k | hf:<id>[:<config>] | parquet:<path> | imagefolder:<dir>
    split: str = "train"                   # the split trained on
    test_split: str = "test"               # the split of the per-epoch test accuracy
    limit_train: int | None = field(default=None, metadata=value_range(1))   # first N training samples only
    limit_test: int | None = field(default=None, metadata=value_range(1))    # first N test samples only
    num_workers: int = field(default=0, metadata=value_range(0))
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class RegularizerConfig:
    name: str = "singular"                 # regcollide.regularizers.list_regularizers()
    weight: float = field(default=1.0, metadata=value_range(0.0))
    params: dict = field(default_factory=dict)   # keyword arguments of build_regularizer(name, **params)


@dataclass
class TrainConfig:
    epochs: int = field(default=3, metadata=value_range(1))
    batch_size: int = field(default=64, metadata=value_range(1))   # per process
    lr: float = field(default=0.05, metadata=value_range(0.0, lo_open=True))
    optimizer: str = field(default="sgd", metadata=choices("sgd", "adam", "adamw"))
    momentum: float = field(default=0.9, metadata=value_range(0.0, 1.0))      # sgd only
    weight_decay: float = field(default=0.0, metadata=value_range(0.0))
    schedule: str = field(default="cosine", metadata=choices("cosine", "constant", "linear"))
    warmup_steps: int = field(default=0, metadata=value_range(0))
    grad_clip: float = field(default=0.0, metadata=value_range(0.0))          # 0 disables clipping
    checkpoint_every: int = field(default=0, metadata=value_range(0))         # steps; 0: only at epoch ends
    keep_checkpoints: int = field(default=2, metadata=value_range(1))
    save_states: bool = True               # False: no periodic states (short runs cheaper to redo than to resume)
    log_every: int = field(default=20, metadata=value_range(1))               # steps between metrics lines
    progress: bool = True                                                # tqdm bar on the main process
    log_with: list[str] = field(default_factory=list)                    # accelerate trackers: tensorboard, wandb, ...
    mixed_precision: str = field(default="no", metadata=choices("no", "fp16", "bf16"))
    num_threads: int = field(default=0, metadata=value_range(0))              # torch CPU threads; 0: torch's default


@dataclass
class EvalConfig(EvalSettings):
    """End-of-run evaluation: every :class:`~regcollide.evaluation.settings.EvalSettings` field, with its
    default, plus two switches of the training loop.

    The eval fields and their defaults come from ``EvalSettings`` alone (this class derives from it), so the
    end-of-run eval, ``regcollide attack pgd`` and ``regcollide eval`` agree on the same model.
    """

    enabled: bool = True                   # evaluate at the end of the run and write results.json
    every_epoch: bool = True               # clean test accuracy after each epoch (metrics.jsonl)

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as err:  # the schema's own check, turned into a one-line config error
            raise ConfigError(f"eval: {err}") from None

    def settings(self) -> EvalSettings:
        """The eval settings alone (without the switches), for ``regcollide.evaluation.evaluate.evaluate_run``."""
        return EvalSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvalSettings)})


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = field(default=0, metadata=value_range(0))
    regularizers: list[RegularizerConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = "runs"                  # parent folder of run folders
    run_name: str | None = None            # None: the config file's stem (suffixed -2, -3 when taken)



# ---------------------------------------------------------------- building from plain data


def from_dict(data: dict) -> Config:
    """Build a validated :class:`Config` from plain data (a parsed YAML file)."""
    return build(Config, data)


def to_dict(config: Config) -> dict:
    """Plain data (lists, not tuples), so that ``yaml.safe_dump`` writes it and :func:`from_dict` reads it back."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- overrides and files


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to nested plain data; the value is parsed as YAML (``3``, ``0.1``, ``[..]``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. train.epochs=3")
    path, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: cannot parse value {raw!r}: {str(err).splitlines()[0]}") from None
    parts = path.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                fail(here, f"no list item {part!r} (the list has {len(node)} items)")
            part = int(part)
        elif not isinstance(node, dict):
            fail(here, f"cannot set a key inside {node!r}")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                if parts[depth + 1].isdigit():
                    fail(here, f"no list to index with {parts[depth + 1]!r}; set the whole list instead")
                node[part] = {}
            node = node[part]


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults), apply ``--set`` overrides and validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(data)


def dump_config(config: Config) -> str:
    """The resolved config as YAML text (the run folder's ``config.yaml``)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# ---------------------------------------------------------------- names that live in other registries


def _one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _check_trackers(log_with: list[str]) -> None:
    """Every ``train.log_with`` entry must be an accelerate tracker whose package is installed."""
    for i, name in enumerate(log_with):
        if name not in LOGGER_TYPE_TO_CLASS:
            close = difflib.get_close_matches(name, list(LOGGER_TYPE_TO_CLASS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            fail(f"train.log_with.{i}", f"unknown tracker {name!r}; {hint}choose from "
                                         f"{', '.join(LOGGER_TYPE_TO_CLASS)}")
        if LoggerType(name) not in get_available_trackers():
            fail(f"train.log_with.{i}", f"the {name} package is not installed; `pip install {name}` or "
                                         "remove it from train.log_with")


def resolve(config: Config) -> Config:
    """Fill the input geometry from the dataset and check the model and regularizer names.

    Raises :class:`ConfigError` (one line, naming the key) for an unloadable dataset spec, an unknown model
    or an unknown regularizer or parameter. Builds nothing heavy; :func:`instantiate` builds the objects.
    """
    from regcollide.data import dataset_info
    from regcollide.models import list_models
    from regcollide.regularizers import list_regularizers

    try:
        info = dataset_info(config.data.spec)
    except (ValueError, OSError) as err:
        raise ConfigError(f"data.spec: {_one_line(err)}") from None
    model = config.model
    model.num_classes = model.num_classes or info.num_classes
    model.in_chans = model.in_chans or info.in_chans
    model.img_size = model.img_size or info.img_size
    if not model.name.startswith(("timm:", "tv:")) and model.name not in list_models():
        valid = list_models()
        close = difflib.get_close_matches(model.name, valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"model.name: unknown model {model.name!r}; {hint}choose from {', '.join(valid)} "
                          "or use timm:<name> / tv:<name>")
    _check_trackers(config.train.log_with)
    valid_regs = list_regularizers()
    for i, reg in enumerate(config.regularizers):
        if reg.name not in valid_regs:
            close = difflib.get_close_matches(reg.name, valid_regs, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"regularizers.{i}.name: unknown regularizer {reg.name!r}; {hint}"
                              f"choose from {', '.join(valid_regs)}")
    return config


def build_model(config: Config) -> Any:
    """The model ``config.model`` names, for a resolved config (:func:`resolve`)."""
    from regcollide.models import create_model

    m = config.model
    try:
        return create_model(m.name, num_classes=m.num_classes, in_chans=m.in_chans, img_size=m.img_size,
                            width=m.width)
    except (ValueError, KeyError, RuntimeError, ImportError) as err:
        raise ConfigError(f"model: cannot build {m.name!r}: {_one_line(err)}") from None


def build_regularizers(config: Config, model: Any) -> tuple[Any, list]:
    """The configured regularizers, each ``setup`` on the model in config order; returns (model, regularizers)."""
    from regcollide.regularizers import build_regularizer

    regularizers = []
    for i, reg in enumerate(config.regularizers):
        try:
            regularizer = build_regularizer(reg.name, **reg.params)
            model = regularizer.setup(model)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"regularizers.{i}.params: {_one_line(err)}") from None
        regularizers.append(regularizer)
    return model, regularizers


def instantiate(config: Config) -> tuple[Any, list]:
    """Build the model and the regularizers (``setup`` applied, in config order) of a resolved config."""
    resolve(config)
    return build_regularizers(config, build_model(config))
