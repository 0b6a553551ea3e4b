"""Rewards used by module tests (importable by FunctionReward path)."""


def length_reward(completions, **_):
    """Mean character code of the completion: differs between almost any two random completions, so every
    group has non-zero variance and the policy gradient is non-zero."""
    return [sum(map(ord, c)) / max(len(c), 1) / 100.0 for c in completions]
