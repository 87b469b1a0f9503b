"""What a training stage checks against what is already on disk, before it writes anything.

* **The data matches the config.** ``config.yaml`` of a stage must describe the data it was
  trained on, so the prepared data's spec (recorded in its manifest) is compared with the
  config's ``data`` section on the fields that determine the data
  (:meth:`DataSpec.determining`); a mismatch (a tiny text config pointed at markov data) is
  refused.
* **A resume continues the run it resumes.** The resolved config is compared with the run's
  recorded ``config.yaml`` on the sections the stage depends on. Budget, cadence and the
  learning rate may change (:data:`RESUMABLE`; the trainer then replays the schedule of the new
  values); any other difference would train something ``config.yaml`` does not describe and is
  refused with the diff. The new config is recorded only later, by the process that holds the
  run's lock (:func:`config_recorder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tsdfm.config import ExperimentConfig, from_dict, save_config, to_dict
from tsdfm.errors import TsdfmError

CONFIG_FILE = "config.yaml"
# TrainConfig keys a resume may change: how long to train, how often to log, evaluate and
# checkpoint, how many threads, and the learning rate (the usual fix for a diverged run).
RESUMABLE = (
    "steps",
    "lr",
    "max_minutes",
    "stop_at_step",
    "log_every",
    "eval_every",
    "ckpt_every",
    "keep_checkpoints",
    "max_bad_steps",
    "tensorboard",
    "num_threads",
)


def check_data_matches(cfg: ExperimentConfig, data, data_dir: Path) -> None:
    """Raise unless ``data`` (prepared data) was prepared from ``cfg.data``."""
    prepared, wanted = data.spec.determining(), cfg.data.determining()
    diffs = [
        f"data.{key}: {old!r} there, {new!r} here" for key, old, new in _changes(prepared, wanted)
    ]
    if diffs:
        raise TsdfmError(
            f"{data_dir} was prepared from another data config ({'; '.join(diffs)}): prepare "
            f"data for this config (`tsdfm data prepare --config ... --out DIR`, then --data "
            f"DIR), or train with the config the data was prepared from"
        )


def check_resume_config(
    cfg: ExperimentConfig, out_dir: Path, sections: tuple[str, ...], train_key: str
) -> list[str]:
    """Compare ``cfg`` with ``out_dir/config.yaml``; return the allowed changes, as text.

    ``sections`` are the top-level config sections the stage depends on and ``train_key`` its
    TrainConfig (``teacher.train``). Reads only: nothing is written, whatever the outcome.
    """
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return []
    recorded = to_dict(_read_recorded(path))
    current = to_dict(cfg)
    allowed, refused = [], []
    for section in sections:
        for key, old, new in _changes(recorded.get(section), current.get(section), section):
            line = f"{key}: {old!r} -> {new!r}"
            parent, _, leaf = key.rpartition(".")
            (allowed if parent == train_key and leaf in RESUMABLE else refused).append(line)
    if refused:
        keys = ", ".join(f"{train_key}.{k}" for k in RESUMABLE)
        raise TsdfmError(
            f"cannot resume {out_dir} with a changed config ({'; '.join(refused)}): it would "
            f"continue a run that {path} no longer describes. On resume only {keys} may change; "
            "revert the others, or start a new run with another --out"
        )
    return allowed


def config_recorder(cfg: ExperimentConfig, out_dir: Path, changes: list[str]) -> Callable[[], None]:
    """The trainer's ``on_start``: write ``config.yaml`` (once the run is locked) and name the
    changes a resume applied."""

    def record() -> None:
        if changes:
            print(f"resume applies: {'; '.join(changes)} (recorded in {out_dir / CONFIG_FILE})")
        save_config(cfg, Path(out_dir) / CONFIG_FILE)

    return record


def _read_recorded(path: Path) -> ExperimentConfig:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(tree, dict):
            raise ValueError("not a mapping")
        return from_dict(ExperimentConfig, tree, where=str(path))
    except (OSError, ValueError, yaml.YAMLError, TsdfmError) as e:
        raise TsdfmError(
            f"{path} (the config this run was trained with) is unreadable ({e}); restore it, "
            "or start a new run with another --out"
        ) from None


def _changes(old: Any, new: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _changes(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
    elif old != new:
        yield prefix, old, new


def checked_recorder(
    cfg: ExperimentConfig,
    data,
    data_dir: Path,
    out_dir: Path,
    resume: bool,
    sections: tuple[str, ...],
    train_key: str,
) -> Callable[[], None]:
    """Both checks (data, then a resume's config), and the ``on_start`` that records the
    config: what every stage calls once its inputs are open and before it writes anything."""
    check_data_matches(cfg, data, data_dir)
    changes = check_resume_config(cfg, out_dir, sections, train_key) if resume else []
    return config_recorder(cfg, out_dir, changes)
