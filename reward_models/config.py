"""Build a reward tree from YAML with jsonargparse, the mechanism LightningCLI uses for ``model.init_args.reward``."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from reward_models.base import Reward


def reward_node(data: Any, source: str) -> Mapping[str, Any]:
    """The ``class_path``/``init_args`` mapping in ``data``: at the root, under ``reward:``, or under
    ``model.init_args.reward`` (a training config)."""
    if isinstance(data, Mapping):
        if "class_path" in data:
            return data
        if isinstance(data.get("reward"), Mapping):
            return data["reward"]
        model = data.get("model")
        if isinstance(model, Mapping) and isinstance(model.get("init_args"), Mapping):
            if isinstance(model["init_args"].get("reward"), Mapping):
                return model["init_args"]["reward"]
    raise ValueError(
        f"{source}: no reward tree found; expected a mapping with 'class_path' (and 'init_args') at the root, "
        "under 'reward:', or under 'model.init_args.reward'"
    )


def build_reward(config: str | Path | Mapping[str, Any]) -> Reward:
    """Instantiate a reward tree from a YAML file path or an already-loaded mapping.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file and jsonargparse's reason.
    """
    from jsonargparse import ArgumentParser

    if isinstance(config, Mapping):
        source, data = "reward config", config
    else:
        source = str(config)
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"reward config {source} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: invalid YAML: {err}") from err
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward", type=Reward, required=True)
    node = dict(reward_node(data, source))
    try:
        cfg = parser.parse_object({"reward": node})
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        reward = instantiate(cfg)["reward"]  # a Namespace, or a dict from instantiate_classes
    except Exception as err:  # jsonargparse's ArgumentError and errors raised by constructors
        raise ValueError(f"{source}: cannot build the reward tree: {err}") from err
    if not isinstance(reward, Reward):
        raise ValueError(f"{source}: built a {type(reward).__name__}, not a Reward")
    return reward
