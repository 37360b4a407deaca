"""One token sequence per (prompt, response): the ids the RM trains on are the ids PPO and eval score.

On a ChatML-style template built here for a tiny model (a turn ends with EOS and then a newline, and the
pad token is EOS, as in SmolLM2 and Qwen2.5), for finished and unfinished answers. tests/test_smollm2.py
runs the same check on SmolLM2's real tokenizer.
"""

import math

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from trl import RewardConfig

from pipeline import reward
from pipeline.answers import answer
from pipeline.configs import PPOConfig
from pipeline.ppo import trainer as ppo_trainer
from pipeline.ppo.trainer import PPOTrainer
from pipeline.reward import GroupedRewardTrainer, RewardReader, load_reward_reader, reward_conversations
from pipeline.reward_evaluation import fit_rows
from pipeline.sampling import encode_prompts, plain
from pipeline.sandbox.tokenizer import train_tokenizer
from pipeline.scoring import score_sequences

CHATML = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = [[{"role": "user", "content": f"Reverse the word {w}."}] for w in ("cat", "dog", "hen", "owl")]


class EosProne(LlamaForCausalLM):
    """A random policy that ends about a third of its answers within three tokens: finished and unfinished ones."""

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        # EOS about as likely as half the vocabulary together: a third of the sampled tokens
        output.logits[..., self.config.eos_token_id] += math.log(self.config.vocab_size / 2)
        return output


def tiny(vocab_size: int, eos: int, pad: int) -> tuple[LlamaForCausalLM, LlamaForSequenceClassification]:
    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = LlamaConfig(vocab_size=vocab_size, eos_token_id=eos, pad_token_id=pad, **shape)
    torch.manual_seed(0)
    return EosProne(config).eval(), LlamaForSequenceClassification(LlamaConfig(num_labels=1, **config.to_dict()))


def trained_reward_model(tokenizer, scorer, pairs: list[tuple[list[dict], str]], tmp_path):
    """Two RewardTrainer steps on (prompt, response) rows as chosen answers: (the trained RM, the ids it trained on)."""
    rows = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": text}],
            "rejected": [{"role": "assistant", "content": text + " no"}],
        }
        for prompt, text in pairs
    ]
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True
    )
    trainer = GroupedRewardTrainer(
        model=scorer, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trained = list(trainer.train_dataset["chosen_ids"])
    trainer.train()
    return trainer.model.eval(), trained


def recording(monkeypatch) -> list[list[int]]:
    """Every sequence the reward model scores, as it reaches the scorer: ids up to the attention mask's end."""
    seen: list[list[int]] = []
    score = reward.score_sequences

    def recorded(model, input_ids, attention_mask):
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True))
        return score(model, input_ids, attention_mask)

    monkeypatch.setattr(reward, "score_sequences", recorded)
    return seen


def check_one_sequence_per_answer(tokenizer, tmp_path, monkeypatch) -> None:
    """PPO's rollouts and eval's answers reach the RM as the very ids RewardTrainer trained on, scored alike."""
    eos = tokenizer.eos_token_id
    policy, scorer = tiny(len(tokenizer), eos, tokenizer.pad_token_id)
    args = PPOConfig(
        output_dir=str(tmp_path / "ppo"),
        sft_model_path="sft",
        reward_model_path="rm",
        total_episodes=16,
        per_device_train_batch_size=16,
        response_length=3,
        normalize_reward=False,
        use_cpu=True,
        report_to=[],
        seed=0,
    )
    accelerator = ppo_trainer.Accelerator(cpu=True, step_scheduler_with_optimizer=False)
    value_model = LlamaForSequenceClassification(scorer.config)
    reference = EosProne(policy.config).eval()
    reference.load_state_dict(policy.state_dict())
    trainer = PPOTrainer(
        args, accelerator, tokenizer, policy, value_model, PROMPTS, tmp_path, ref_policy=reference, reward_model=scorer
    )
    # What PPO's rollout and eval's answers read: (prompt, decoded response) pairs and the ids scored
    read: list[tuple[list[dict], str]] = []
    rewards = ppo_trainer.response_rewards

    def reading(model, tok, prompts, responses, *rest):
        read.extend(zip(prompts, responses, strict=True))
        return rewards(model, tok, prompts, responses, *rest)

    monkeypatch.setattr(ppo_trainer, "response_rewards", reading)
    seen = recording(monkeypatch)
    _, stats = trainer.rollout(0)
    assert 0 < stats["val/eos_fraction"] < 1  # finished and unfinished answers both reached the RM
    ppo_ids, ppo_read = list(seen), list(read)
    seen.clear()
    answers = answer(
        plain(policy), tokenizer, PROMPTS, 3, 4, eos, num_samples=2, reward_model=plain(scorer), progress=False
    )
    eval_ids = list(seen)
    assert len(eval_ids) == len(PROMPTS) * 3
    eval_read = [(p, t) for p, t in zip(PROMPTS, answers.texts, strict=True)]
    eval_read += [(p, t) for p, texts in zip(PROMPTS, answers.samples, strict=True) for t in texts]

    # The RM trains on the same (prompt, response) pairs; its training ids are the ids PPO and eval scored
    pairs = ppo_read + eval_read
    rm, trained = trained_reward_model(tokenizer, scorer, pairs, tmp_path)
    assert ppo_ids + eval_ids == trained
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert all(ids[-len(newline) - 1 :] == [eos, *newline] for ids in trained)  # read at the newline after EOS

    # The trained RM scores every answer the same whichever stage reads it (1e-5)
    for (prompt, text), ids in zip(pairs, trained, strict=True):
        alone = score_sequences(rm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
        score = reward.response_rewards(plain(rm), RewardReader(tokenizer), [prompt], [text])[0]
        assert score == pytest.approx(alone, abs=1e-5)
    # Not so the old readout, the query and the answer's own ids (with EOS when it finished)
    for prompt, text in ppo_read:
        old = encode_prompts(tokenizer, [prompt])[0] + tokenizer.encode(text, add_special_tokens=False)
        assert old not in trained and old + [eos] not in trained


def chatml_tokenizer():
    tokenizer = train_tokenizer(["Reverse the word cat. Sure! tac"] * 100, min_count=100)
    tokenizer.chat_template = CHATML
    tokenizer.pad_token = tokenizer.eos_token  # as SmolLM2 and Qwen2.5 ship
    return tokenizer


def test_ppo_and_eval_score_the_ids_the_reward_model_trained_on(tmp_path, monkeypatch):
    check_one_sequence_per_answer(chatml_tokenizer(), tmp_path, monkeypatch)


def test_long_prompts_are_read_as_the_reward_models_training_rows_were_cut(tmp_path):
    """Past the RM's max_length a prompt loses its earliest turns, as fit_prompts cut its training rows;
    the held-out lists are cut (or, without fit_prompts, left out) by the same rule."""
    tokenizer = chatml_tokenizer()
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    long = [turn("user", "cat " * 30), turn("assistant", "tac " * 30), turn("user", "Reverse the word cat.")]
    answer = [turn("assistant", "tac")]
    fits = len(tokenizer.apply_chat_template(long[2:] + answer, return_dict=True)["input_ids"])
    reader = RewardReader(tokenizer, max_length=fits + 5)
    assert reward_conversations([long], ["tac"], reader) == [long[2:] + answer]
    assert reward_conversations([long], ["tac"], RewardReader(tokenizer)) == [long + answer]
    rows = [
        {"prompt": long, "responses": [answer, [turn("assistant", "cat")]]},
        {"prompt": long[2:], "responses": [answer]},
    ]
    assert [r["prompt"] for r in fit_rows(rows, tokenizer, fits + 5, cut_prompts=True)] == [long[2:], long[2:]]
    assert [r["prompt"] for r in fit_rows(rows, tokenizer, fits + 5, cut_prompts=False)] == [long[2:]]
    # The reader of a saved RM: its own tokenizer and its recipe's max_length
    tokenizer.save_pretrained(tmp_path / "rm")
    (tmp_path / "rm" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "rm" / "recipe.yaml").write_text("stage: rm\nmax_length: 96\n")
    found = load_reward_reader(str(tmp_path / "rm"), policy_tokenizer=None)
    assert found.max_length == 96 and found.tokenizer.chat_template == CHATML
