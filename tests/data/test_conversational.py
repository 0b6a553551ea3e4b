"""TRL's conversational dataset format (``prompt`` holding a message list) loads as it is, and the chat
reaches the reward: as ``Samples.prompt_messages`` and, through FunctionReward, as TRL's ``prompts``."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_trepo import GRPO
from lightning_trepo.data import ListSource, PromptDataModule
from reward_models import PROMPT_MESSAGES_KEY, FunctionReward
from tests.data.conftest import CHAT_TEMPLATE
from tests.helpers import TINY, rollout_cfg, trainer

SYSTEM = {"role": "system", "content": "be brief"}


def trl_rows(n: int) -> list[dict]:
    """TRL conversational rows: the prompt is a chat, the reference sits in a ``solution`` column."""
    return [{"prompt": [SYSTEM, {"role": "user", "content": f"{i}+1="}], "solution": str(i + 1)} for i in range(n)]


def make(rows: list[dict], tokenizer, **connect) -> PromptDataModule:
    dm = PromptDataModule(source=ListSource(rows), batch_size=len(rows), shuffle=False)
    dm.setup("fit")
    dm.connect(tokenizer, **connect)
    return dm


def test_trl_conversational_rows_are_rendered_and_keep_their_chat(chat_tokenizer) -> None:
    rows = trl_rows(2) + [{"prompt": "5+5=", "solution": "10"}]  # a plain row in the same source
    (batch,) = list(make(rows, chat_tokenizer).train_dataloader())
    # conftest.CHAT_TEMPLATE renders "<role>content\n" per message, then "<assistant>"
    assert batch["prompts"] == [
        "<system>be brief\n<user>0+1=\n<assistant>",
        "<system>be brief\n<user>1+1=\n<assistant>",
        "<user>5+5=\n<assistant>",
    ]
    assert batch["prompt_ids"][0] == chat_tokenizer(batch["prompts"][0], add_special_tokens=False)["input_ids"]
    assert batch["raw_prompts"] == ["0+1=", "1+1=", "5+5="]  # the last user turn, for judges and learned RMs
    assert batch["metadata"] == [{"solution": "1", PROMPT_MESSAGES_KEY: rows[0]["prompt"]},
                                 {"solution": "2", PROMPT_MESSAGES_KEY: rows[1]["prompt"]},
                                 {"solution": "10", PROMPT_MESSAGES_KEY: [{"role": "user", "content": "5+5="}]}]


def test_conversational_prompt_errors_name_row_and_column(chat_tokenizer, char_tokenizer) -> None:
    with pytest.raises(ValueError, match=r"row 0 of .* chat \('prompt' column\).* no chat_template"):
        make(trl_rows(1), char_tokenizer)
    bad = trl_rows(2)
    bad[1]["prompt"] = [{"role": "user"}]
    with pytest.raises(ValueError, match=r"row 1 of .*: column 'prompt' must be a non-empty list of"):
        make(bad, chat_tokenizer)
    with pytest.raises(ValueError, match=r"row 0 of .*: column 'prompt' must be a string or a list of .* got int"):
        make([{"prompt": 3}], chat_tokenizer)
    with pytest.raises(ValueError, match=r"row 0 of .* has a column 'prompt_messages', a name the data layer reserves"):
        make([{"prompt": "1+1=", PROMPT_MESSAGES_KEY: "x"}], chat_tokenizer)


SEEN: list[dict] = []


def recorder(prompts, completions, completion_ids, solution, trainer_state, **kwargs):
    """Records its TRL arguments; scores the completion length in tokens."""
    SEEN.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                 "solution": solution, "step": trainer_state.global_step, "epoch": trainer_state.epoch,
                 "max_steps": trainer_state.max_steps})
    return [float(len(ids)) for ids in completion_ids]


def test_training_passes_trl_arguments_to_the_reward(tmp_path) -> None:
    """Two GRPO steps on TRL conversational rows with the built-in model given a chat template."""
    pl.seed_everything(0)
    SEEN.clear()
    module = GRPO(reward=FunctionReward("tests.data.test_conversational.recorder"), policy=TINY,
                  rollout=rollout_cfg(group_size=2, max_new_tokens=3), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    module.tokenizer.chat_template = CHAT_TEMPLATE
    rows = trl_rows(4)
    dm = PromptDataModule(source=ListSource(rows), batch_size=2, shuffle=False, max_prompt_length=48)
    trainer(tmp_path, max_steps=2).fit(module, datamodule=dm)
    assert [(s["step"], s["epoch"], s["max_steps"]) for s in SEEN] == [(0, 0, 2), (1, 0, 2)]
    first = SEEN[0]
    # batch 0 holds rows 0 and 1, each sampled G = 2 times (samples of a prompt are contiguous)
    assert first["prompts"] == [rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2
    assert first["solution"] == ["1", "1", "2", "2"]
    assert all(c == [{"role": "assistant", "content": c[0]["content"]}] for c in first["completions"])
    assert all(1 <= len(ids) <= 3 for ids in first["completion_ids"])  # real tokens only, at most max_new_tokens
    for ids, c in zip(first["completion_ids"], first["completions"], strict=True):
        assert module.tokenizer.decode(ids, skip_special_tokens=True) == c[0]["content"]
