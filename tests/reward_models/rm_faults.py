"""Faulty reward functions for the fault-injection matrix (not a test module)."""
import math
import time


def raises(completions, **_):
    raise ValueError("fault: scorer crashed")


def nan(completions, **_):
    return [math.nan] * len(completions)


def inf(completions, **_):
    return [math.inf] * len(completions)


def one_too_many(completions, **_):
    return [0.0] * (len(completions) + 1)


def strings(completions, **_):
    return ["good"] * len(completions)


def numeric_strings(completions, **_):
    return ["1.5"] * len(completions)


def hangs(completions, **_):
    time.sleep(3)
    return [0.0] * len(completions)
