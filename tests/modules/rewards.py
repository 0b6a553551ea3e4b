"""Rewards used by module tests (importable by FunctionReward path)."""


def length_reward(completions, **_):
    """Mean character code of the completion: differs between almost any two random completions, so every
    group has non-zero variance and the policy gradient is non-zero."""
    return [sum(map(ord, c)) / max(len(c), 1) / 100.0 for c in completions]


def starts_with_one(completions, **_):
    """1.0 iff the completion's first character is '1': fixed by the first token alone."""
    return [1.0 if c.startswith("1") else 0.0 for c in completions]


def first_char_odd(completions, **_):
    """1.0 iff the completion's first character has an odd code: about half the samples, so about half the
    groups of two are informative (dynamic sampling tests)."""
    return [float(bool(c) and ord(c[0]) % 2 == 1) for c in completions]


def answer_is_even(completions, answer, **_):
    """1.0 iff the row's reference answer is even: fixed by the prompt alone, so held-out accuracy is known exactly
    from the data, whatever the policy generates."""
    return [1.0 if int(a) % 2 == 0 else 0.0 for a in answer]
