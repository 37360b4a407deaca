"""PPO's loop on accelerate: roll out -> score -> advantages -> clipped updates, checkpointed every N steps.

Per rollout the policy runs once (sampling yields the log-probs), then one reference pass and one
value pass over the batch in chunks, and one reward pass over the responses as the reward model was
trained to read them (`reward_conversations`: the prompt and the decoded response through its chat
template); with LoRA the reference is the policy with its adapter disabled, and a LoRA value model's
adapter-free weights are the reward model.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, get_scheduler

from pipeline import outputs
from pipeline.configs import PPOConfig
from pipeline.distributed import (
    fill_deepspeed_config,
    prepare_frozen,
    root_gathered,
    scalar,
    start_sharded_root,
)
from pipeline.errors import PipelineError
from pipeline.ppo import checkpoint
from pipeline.ppo.core import (
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    masked_whiten,
    policy_loss,
    shape_rewards,
    value_loss,
)
from pipeline.ppo.kl import AdaptiveKLController, FixedKLController
from pipeline.ppo.models import critic_from_reward_model, normalise_score_head, with_bias
from pipeline.reward import RewardReader, response_rewards, spearman
from pipeline.sampling import (
    Called,
    decode,
    encode_prompts,
    left_pad,
    plain,
    response_logprobs,
    sample,
    sampling_generator,
)
from pipeline.scoring import response_values, trained_score_head
from pipeline.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)
# (prompts, responses, finished) -> gold scores: the sandbox judge, logged along the run when given.
GoldFn = Callable[[list[list[dict]], list[str], list[bool]], list[float]]


@dataclass
class Rollout:
    queries: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __getitem__(self, rows: torch.Tensor) -> Rollout:
        return Rollout(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def lm_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """A language-modelling batch of plain texts: padding is no label."""
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    return {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}


def create_optimizer(args: PPOConfig, policy: torch.nn.Module, value_model: torch.nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser (`optim`, `adam_beta1/2`, `adam_epsilon`) built as transformers' Trainer builds it.

    Trainer's parameter groups, weight decay on all but biases and norms, once for the policy at
    `learning_rate` and once for the value model at `value_learning_rate`.
    """
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    groups = []
    value_lr = args.value_learning_rate or args.learning_rate
    for name, model, lr in (("policy", policy, args.learning_rate), ("value", value_model, value_lr)):
        decay = set(Trainer.get_decay_parameter_names(None, model))  # a method that reads nothing of the Trainer
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # `model` names the group's model (a critic warm-up stops the policy's)
        common = {"lr": lr, "model": name}
        groups.append({"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay, **common})
        groups.append({"params": [p for n, p in named if n not in decay], "weight_decay": 0.0, **common})
    return optimizer_cls([g for g in groups if g["params"]], **kwargs)


class PolicyAndValue(torch.nn.Module):
    """The policy and the value model as one module, whose forward runs the passes PPO trains on."""

    def __init__(self, policy: PreTrainedModel, value_model: PreTrainedModel) -> None:
        super().__init__()
        self.policy, self.value_model = policy, value_model
        # FSDP2 shards each decoder layer as a unit of its own, as in a plain transformers model
        layers = {name for model in (policy, value_model) for name in getattr(model, "_no_split_modules", None) or []}
        self._no_split_modules = sorted(layers)

    def tie_weights(self, **kwargs: Any) -> None:
        """Ties each model's weights again (an LM head to its embeddings), as `PreTrainedModel.tie_weights` does:
        accelerate calls it after FSDP2's loading from rank 0 has moved every weight apart."""
        self.policy.tie_weights(**kwargs)
        self.value_model.tie_weights(**kwargs)

    def forward(self, part: Literal["logprobs", "values", "lm_loss"], *args: Any, **kwargs: Any) -> Any:
        """`logprobs`: `response_logprobs` of the policy; `values`: `response_values`; `lm_loss`: the policy's loss."""
        if part == "logprobs":
            return response_logprobs(self.policy, *args, **kwargs)
        if part == "values":
            return response_values(self.value_model, *args, **kwargs)
        return self.policy(**kwargs).loss


class PPOTrainer:
    def __init__(
        self,
        args: PPOConfig,
        accelerator: Accelerator,
        tokenizer: PreTrainedTokenizerBase,
        policy: PreTrainedModel,
        value_model: PreTrainedModel,
        prompts: list[list[dict]],
        work: Path,
        ref_policy: PreTrainedModel | None = None,
        reward_model: PreTrainedModel | None = None,
        reward_stats: tuple[float, float] | None = None,
        ptx_texts: list[str] | None = None,
        gold_fn: GoldFn | None = None,
        reward_reader: RewardReader | None = None,
        prompt_groups: list[str] | None = None,
    ) -> None:
        """`ref_policy` None: the LoRA policy with its adapter off; `reward_model` None: likewise the value model.

        `reward_stats`: the mean and std that `normalize_reward` divides by (None: the first rollout's scores);
        `reward_reader`: how the reward model reads a response (default: the policy's tokenizer, no length);
        `prompt_groups`: a label per prompt (the sandbox's task family), whose mix each update logs.
        """
        self.args, self.accelerator, self.tokenizer = args, accelerator, tokenizer
        self.prompts, self.gold_fn, self.work = prompts, gold_fn, work
        self.reward_reader, self.prompt_groups = reward_reader or RewardReader(tokenizer), prompt_groups
        self.reward_stats = reward_stats
        # The vLLM engine that samples rollouts (the stage sets it; None: `sampling.sample`), given the policy's
        # weights before each rollout that follows an update; `vllm_step`: the step whose weights it holds
        self.vllm: VLLMEngine | None = None
        self.vllm_step: int | None = None
        self.query_ids = encode_prompts(tokenizer, prompts)
        if args.max_prompt_length is not None:
            # From the left: the end holds the turn the response answers and the assistant's header
            longer = sum(len(ids) > args.max_prompt_length for ids in self.query_ids)
            self.query_ids = [ids[-args.max_prompt_length :] for ids in self.query_ids]
            logger.info(
                "%d of %d prompts longer than max_prompt_length (%d tokens): cut from the left",
                longer,
                len(self.query_ids),
                args.max_prompt_length,
            )
        self.stop_token_id = tokenizer.eos_token_id if args.stop_token == "eos" else None

        if args.world_size != accelerator.num_processes:
            raise ValueError(
                f"PPOConfig counted {args.world_size} processes and the Accelerator has {accelerator.num_processes}"
            )
        optimizer_steps = args.num_updates * args.num_ppo_epochs * args.num_mini_batches

        # The critic in the reward's units: copied from the reward model, its head is rescaled to predict the
        # normalised score PPO rewards (with statistics from the first rollout: once that has run)
        if critic_from_reward_model(args):
            head = with_bias(trained_score_head(value_model))
            if reward_stats is not None:
                normalise_score_head(head, *reward_stats)

        # One module and one optimiser (parameter groups each) for the two trained models: under
        # DeepSpeed an Accelerator prepares a single model
        trained = PolicyAndValue(policy, value_model)
        optimizer = create_optimizer(args, policy, value_model)
        # The schedule counts optimiser steps, and `learn` steps it once per step: an accelerator that
        # steps it with the optimiser does so once per process per step
        if accelerator.step_scheduler_with_optimizer:
            raise ValueError("PPOTrainer needs an Accelerator(step_scheduler_with_optimizer=False)")
        scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(optimizer_steps),
            num_training_steps=optimizer_steps,
        )
        fill_deepspeed_config(accelerator, args.per_device_train_batch_size, args.max_grad_norm)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(trained, optimizer, scheduler)
        if accelerator.gradient_accumulation_steps != args.gradient_accumulation_steps:
            raise PipelineError(
                f"the DeepSpeed config's gradient_accumulation_steps ({accelerator.gradient_accumulation_steps}) "
                f'differs from the recipe\'s ({args.gradient_accumulation_steps}): set it to "auto"'
            )
        start_sharded_root(self.model)
        # After `prepare`, which completes DeepSpeed's config ("auto" batch sizes) that the frozen engines copy
        self.ref_policy = None if ref_policy is None else prepare_frozen(accelerator, ref_policy)
        self.reward_model = None if reward_model is None else prepare_frozen(accelerator, reward_model)
        self.kl_controller = (
            AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
            if args.kl_target
            else FixedKLController(args.kl_coef)
        )
        # Permutations draw on the CPU, sampling on the model's device: one generator when both are the CPU
        seed = args.seed + accelerator.process_index
        self.generator = torch.Generator().manual_seed(seed)
        on_cpu = accelerator.device.type == "cpu"
        self.sampling_generator = self.generator if on_cpu else sampling_generator(accelerator.device, seed)
        self.ptx_texts = ptx_texts
        # A fixed shuffle of the pretraining texts, cut into batches that are tokenised as they are used.
        self.ptx_order = (
            torch.randperm(len(ptx_texts), generator=torch.Generator().manual_seed(args.seed)).tolist()
            if ptx_texts
            else []
        )
        self.ptx_position = 0
        self.step = 0
        # Ranks sample in step under every engine, so DDP, ZeRO and FSDP runs draw the same random numbers;
        # a DDP rank that finished first would only wait at the next collective
        self.synced = accelerator.num_processes > 1
        checkpoint.keep_trainable_weights(accelerator)

    # Data: a fixed stream of prompt indices (a fresh permutation per pass), so a step's batch depends only on the step
    def _batch_indices(self, step: int, rank: int | None = None) -> list[int]:
        rank = self.accelerator.process_index if rank is None else rank
        start = step * self.args.batch_size + rank * self.args.local_batch_size
        orders: dict[int, list[int]] = {}
        indices = []
        for episode in range(start, start + self.args.local_batch_size):
            epoch, offset = divmod(episode, len(self.prompts))
            if epoch not in orders:
                seeded = torch.Generator().manual_seed(self.args.seed + epoch)
                orders[epoch] = torch.randperm(len(self.prompts), generator=seeded).tolist()
            indices.append(orders[epoch][offset])
        return indices

    def trained_groups(self) -> dict[str, int]:
        """How many episodes of each prompt group the run's updates drew, over all processes."""
        return dict(
            sorted(
                Counter(
                    self.prompt_groups[i]
                    for step in range(self.step)
                    for rank in range(self.accelerator.num_processes)
                    for i in self._batch_indices(step, rank)
                ).items()
            )
        )

    def _sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, "sum")

    def _mean_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over the ranks (their batches are the same size), a `_max` one maximised;
        the same on every rank."""
        names = sorted(stats)
        values = torch.tensor([stats[name] for name in names], dtype=torch.float64, device=self.accelerator.device)
        reduced = self.accelerator.reduce(values, "mean")
        if self.accelerator.num_processes > 1:
            highest = values.clone()
            torch.distributed.all_reduce(highest, op=torch.distributed.ReduceOp.MAX)
            is_max = torch.tensor([name.endswith("_max") for name in names], device=values.device)
            reduced = torch.where(is_max, highest, reduced)
        return dict(zip(names, reduced.tolist(), strict=True))

    def _stop_if_not_finite(self, **quantities: torch.Tensor | None) -> None:
        """A NaN or inf on any rank stops the run on every rank, before the update it would spoil (DeepSpeed's
        gradient norm comes after its engine stepped: before the next checkpoint)."""
        present = {name: value for name, value in quantities.items() if value is not None}
        if not present:
            return
        bad = torch.stack([(~torch.isfinite(value.detach())).any() for value in present.values()]).float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, "sum")
        names = [name.replace("_", " ") for name, flag in zip(present, bad.tolist(), strict=True) if flag]
        if names:
            raise PipelineError(
                f"ppo update {self.step + 1}: {', '.join(names)} not finite (NaN or inf); the last checkpoint in "
                f"{self.work} is kept: lower the learning rate or check the reward model, then run again"
            )

    def _clip_gradients(self) -> dict[str, torch.Tensor]:
        """Gradient norms before clipping at max_grad_norm, each model's alone: `policy/grad_norm`, `value/grad_norm`.

        DeepSpeed's engine has already clipped the joint norm in `backward` (its config's gradient_clipping)
        and stepped; it reports that one norm, `grad_norm`. FSDP2's norms are DTensors, DeepSpeed's floats.
        """
        accelerator = self.accelerator
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            norms = {"grad_norm": accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)}
        else:
            norms = {
                f"{name}/grad_norm": accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                for name, model in (("policy", self.policy), ("value", self.value_model))
            }
        return {name: scalar(norm, accelerator.device) for name, norm in norms.items() if norm is not None}

    def _ptx_loss(self) -> torch.Tensor:
        # Each rank takes its own batches of the one shuffled stream
        size, accelerator = self.args.ptx_batch_size, self.accelerator
        index = self.ptx_position * accelerator.num_processes + accelerator.process_index
        start = index % (len(self.ptx_order) // size) * size
        self.ptx_position += 1
        texts = [self.ptx_texts[i] for i in self.ptx_order[start : start + size]]
        batch = lm_batch(self.tokenizer, texts, self.args.ptx_max_length)
        return self.model("lm_loss", **{k: v.to(self.accelerator.device) for k, v in batch.items()})

    @property
    def policy(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model).policy

    @property
    def value_model(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model).value_model

    def reference(self) -> Called:
        """The frozen SFT policy, and the context in which to call it."""
        if self.ref_policy is not None:
            return plain(self.ref_policy)
        policy = self.policy
        return policy, policy.disable_adapter

    def reward(self) -> Called:
        """The frozen reward model, and the context in which to call it."""
        if self.reward_model is not None:
            return plain(self.reward_model)
        value_model = self.value_model
        return value_model, value_model.disable_adapter

    @torch.no_grad()
    def generate_and_score(self, queries: torch.Tensor, query_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sampled responses with their log-probs and entropies, the reference's log-probs, and the values.

        In chunks of `local_rollout_forward_batch_size`; responses are cut to the longest one.
        """
        args, pad = self.args, self.tokenizer.pad_token_id
        # No-grad passes call the models themselves, not their multi-process wrapper; every model only scores here
        policy, value_model = self.policy, self.value_model
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        # The passes of training run under mixed precision's autocast; these match them
        with self.accelerator.autocast(), root_gathered(self.model):
            for start in range(0, len(queries), args.local_rollout_forward_batch_size):
                rows = slice(start, start + args.local_rollout_forward_batch_size)
                q, qm = queries[rows], query_mask[rows]
                samples = sample(
                    policy,
                    q,
                    qm,
                    args.response_length,
                    args.temperature,
                    self.stop_token_id,
                    pad,
                    self.sampling_generator,
                    synced=self.synced,
                    engine=self.vllm,
                )
                responses, mask = samples.responses, samples.mask
                logprobs, entropy = samples.logprobs, samples.entropy
                if self.accelerator.mixed_precision != "no" and self.vllm is None:
                    # bf16 and fp16 round the sampler's one-token passes differently from learning's pass over
                    # the whole sequence: the log-probs come from a pass like the latter, so updates start at ratio 1
                    logprobs, entropy = response_logprobs(policy, q, qm, responses, mask, args.temperature)
                reference, disabled = self.reference()
                with disabled():
                    ref_logprobs, _ = response_logprobs(reference, q, qm, responses, mask, args.temperature)
                values = response_values(value_model, q, qm, responses, mask)
                pad_to = args.response_length - responses.shape[1]
                for name, tensor in (
                    ("responses", responses),
                    ("mask", mask),
                    ("logprobs", logprobs),
                    ("ref_logprobs", ref_logprobs),
                    ("values", values),
                    ("entropy", entropy),
                ):
                    fill = pad if name == "responses" else 0
                    parts[name].append(torch.nn.functional.pad(tensor, (0, pad_to), value=fill))
        batch = {name: torch.cat(tensors) for name, tensors in parts.items()}
        width = int(batch["mask"].sum(1).max())
        return {k: v[:, :width] for k, v in batch.items()}

    @torch.no_grad()
    def rm_scores(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        """The reward model's score of each response, on the very sequence it was trained on."""
        with self.accelerator.autocast(), root_gathered(self.model):
            scores = response_rewards(
                self.reward(),
                self.reward_reader,
                prompts,
                responses,
                self.args.local_rollout_forward_batch_size,
            )
        return torch.tensor(scores, device=self.accelerator.device)

    def _scores(self, rm_scores: torch.Tensor, gold: torch.Tensor | None) -> torch.Tensor:
        """The score each response earns: the RM's, normalised (`normalize_reward`), or the gold diagnostic's."""
        if self.args.gold_reward_scale:
            return self.args.gold_reward_scale * gold
        if not self.args.normalize_reward:
            return rm_scores
        return (rm_scores - self.reward_stats[0]) / self.reward_stats[1]

    def _normalise_critic(self, values: torch.Tensor) -> torch.Tensor:
        """Once the first rollout gave the reward statistics: the value head rescaled to them in place, and this
        rollout's values with it."""
        if not critic_from_reward_model(self.args):
            return values
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # Its optimiser holds master copies of the weights that an edit of the module's would not reach
            if self.accelerator.is_main_process:
                logger.warning(
                    "normalize_reward: under DeepSpeed the value model keeps the reward model's raw units (its "
                    "statistics came from the first rollout); a reward_mean/reward_std in %s's %s starts it in "
                    "the normalised ones",
                    self.args.reward_model_path,
                    outputs.METRICS_FILE,
                )
            return values
        mean, std = self.reward_stats
        normalise_score_head(trained_score_head(self.value_model), mean, std)
        return (values - mean) / std

    def _first_rollout_stats(self, rm_scores: torch.Tensor) -> tuple[float, float]:
        """The mean and std of the first rollout's RM scores over every rank: the statistics of a reward model
        that carries none (a Hub model), measured on the policy it will score; kept in checkpoints."""
        scores = self.accelerator.gather(rm_scores).float()
        mean, std = scores.mean().item(), scores.std(unbiased=False).item()
        if not std > 0:
            raise PipelineError(
                f"normalize_reward: the reward model has no reward_mean/reward_std in its {outputs.METRICS_FILE}, "
                f"and the first rollout's {len(scores)} scores have no spread to take them from; "
                "set normalize_reward: false"
            )
        if self.accelerator.is_main_process:
            logger.info(
                "normalize_reward: %s has no reward statistics; the first rollout's %d scores give mean %.4f, std %.4f",
                self.args.reward_model_path,
                len(scores),
                mean,
                std,
            )
        return mean, std

    def _sync_engine(self) -> float:
        """Give the vLLM engine the policy's weights if an update (or a resume) changed them: seconds taken."""
        if self.vllm is None or self.vllm_step == self.step:
            return 0.0
        started = time.monotonic()
        self.vllm.load_weights(self.policy)
        self.vllm_step = self.step
        return time.monotonic() - started

    @torch.no_grad()
    def rollout(self, step: int) -> tuple[Rollout, dict[str, float]]:
        """Sample responses for the step's prompts, score them, and turn scores and KL into advantages."""
        args, device = self.args, self.accelerator.device
        sync_seconds = self._sync_engine()
        indices = self._batch_indices(step)
        queries, query_mask = left_pad([self.query_ids[i] for i in indices], self.tokenizer.pad_token_id)
        queries, query_mask = queries.to(device), query_mask.to(device)
        batch = self.generate_and_score(queries, query_mask)
        mask = batch["mask"]
        texts, finished = decode(self.tokenizer, batch["responses"], mask, self.stop_token_id)
        has_stop = torch.tensor(finished, device=device)
        prompts = [self.prompts[i] for i in indices]
        batch["scores"] = self.rm_scores(prompts, texts)
        if args.normalize_reward and not args.gold_reward_scale and self.reward_stats is None:
            self.reward_stats = self._first_rollout_stats(batch["scores"])
            batch["values"] = self._normalise_critic(batch["values"])
        gold = None
        if self.gold_fn is not None:
            gold = torch.tensor(self.gold_fn(prompts, texts, finished), device=device)

        # Rewards: the score at the last token less the EOS penalty, the KL penalty on every token
        kl = kl_estimate(batch["logprobs"], batch["ref_logprobs"], args.kl_estimator) * mask
        penalty = args.missing_eos_penalty if self.stop_token_id is not None else None
        rewards, non_score, scores = shape_rewards(
            self._scores(batch["scores"], gold), kl, mask, self.kl_controller.value, has_stop, penalty
        )
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=self._sum_over_ranks)
        advantages, returns = gae(rewards, batch["values"], mask, args.gamma, args.lam)
        explained = explained_variance(batch["values"], returns, mask)
        advantages = masked_whiten(advantages, mask, reduce=self._sum_over_ranks)
        self._stop_if_not_finite(reward=rewards, advantage=advantages)

        stats = {
            "objective/rm_score": batch["scores"].mean().item(),
            "objective/normalized_scores": scores.mean().item(),
            "objective/kl": kl.sum(1).mean().item(),
            "objective/non_score_reward": non_score.sum(1).mean().item(),
            "objective/rlhf_reward": (scores + non_score.sum(1)).mean().item(),
            "objective/token_entropy": masked_mean(batch["entropy"], mask).item(),
            "val/response_length": mask.sum(1).mean().item(),
            "val/eos_fraction": has_stop.float().mean().item(),
            "val/explained_variance": explained,
        }
        if gold is not None:
            stats["objective/gold"] = gold.mean().item()
            # Does the RM still order the rollouts as gold does? A falling value flags reward hacking. Every
            # rank has the key (the keys must match across ranks); one rollout has no order
            if len(indices) > 1:
                stats["objective/rm_gold_spearman"] = spearman(batch["scores"].tolist(), gold.tolist())
        if self.vllm is not None:
            stats["time/weight_sync"] = sync_seconds
        if self.prompt_groups is not None:
            groups = Counter(self.prompt_groups[i] for i in indices)
            stats.update({f"prompts/{g}": groups[g] / len(indices) for g in sorted(set(self.prompt_groups))})
        rollout = Rollout(
            queries,
            query_mask,
            batch["responses"],
            mask,
            batch["logprobs"],
            batch["values"] * mask,
            advantages,
            returns,
        )
        return rollout, stats

    def learn(self, rollout: Rollout) -> dict[str, float]:
        """num_ppo_epochs passes over the rollout in shuffled mini-batches: clipped policy and value updates."""
        args, accelerator = self.args, self.accelerator
        self.model.train()
        collected: dict[str, list[float]] = defaultdict(list)
        # A critic warm-up keeps the policy's loss in the graph at weight 0 (DDP reduces every parameter's gradient)
        # and its learning rate at 0 until the scheduler's next step (no weight decay moves it either)
        policy_weight = 0.0 if self.step < args.critic_warmup_updates else 1.0
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(self.args.local_batch_size, generator=self.generator).to(accelerator.device)
            for mini_batch in order.split(self.args.mini_batch_size):
                for micro_batch in mini_batch.split(args.per_device_train_batch_size):
                    part = rollout[micro_batch]
                    with accelerator.accumulate(self.model):
                        logprobs, entropy = self.model(
                            "logprobs", part.queries, part.query_mask, part.responses, part.mask, args.temperature
                        )
                        pg_loss, pg_stats = policy_loss(
                            logprobs, part.logprobs, part.advantages, part.mask, args.cliprange
                        )
                        values = self.model("values", part.queries, part.query_mask, part.responses, part.mask)
                        vf_loss, vf_stats = value_loss(
                            values, part.values, part.returns, part.mask, args.cliprange_value
                        )
                        loss, ptx_loss = pg_loss, None
                        if self.ptx_texts and args.ptx_coef > 0:
                            ptx_loss = self._ptx_loss()
                            loss = loss + args.ptx_coef * ptx_loss
                            collected["loss/ptx"].append(ptx_loss.item())
                        loss = policy_weight * loss + args.vf_coef * vf_loss
                        self._stop_if_not_finite(policy_loss=pg_loss, value_loss=vf_loss, ptx_loss=ptx_loss)
                        if not policy_weight:
                            for group in self.optimizer.param_groups:
                                if group.get("model") == "policy":
                                    group["lr"] = 0.0
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and args.max_grad_norm:
                            norms = self._clip_gradients()
                            self._stop_if_not_finite(**norms)
                            for name, norm in norms.items():
                                collected[name].append(norm.item())
                        self.optimizer.step()
                        if accelerator.sync_gradients and not self.optimizer.step_was_skipped:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    collected["loss/policy_avg"].append(pg_loss.item())
                    collected["loss/value_avg"].append(vf_loss.item())
                    collected["policy/entropy"].append(masked_mean(entropy.detach(), part.mask).item())
                    for name, value in {**pg_stats, **vf_stats}.items():
                        collected[name].append(value.item())
        stats = {
            name: max(values) if name.endswith("_max") else sum(values) / len(values)
            for name, values in collected.items()
        }
        stats["lr"] = self.scheduler.get_last_lr()[0]
        return stats

    def _state(self, generators: list[list[torch.Tensor]]) -> dict:
        return {
            "step": self.step,
            "ptx_position": self.ptx_position,
            "kl_controller": self.kl_controller.state_dict(),
            "generators": generators,
            "reward_stats": list(self.reward_stats) if self.reward_stats is not None else None,
        }

    def save_checkpoint(self) -> None:
        """Every rank saves its part; the trainer state holds every rank's generators (CPU, sampling)."""
        generators = gather_object([[self.generator.get_state(), self.sampling_generator.get_state()]])
        checkpoint.save(self.work, self.step, self.accelerator, self._state(generators))

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in the work folder, if any; the log keeps its steps."""
        found = outputs.last_checkpoint(self.work)
        if found is None:
            return False
        step, folder = found
        state = checkpoint.trainer_state(folder)
        if len(state["generators"]) != self.accelerator.num_processes:
            raise PipelineError(
                f"{folder} was written by {len(state['generators'])} process(es) and this run has "
                f"{self.accelerator.num_processes}: resume with the same number, or delete {self.work}"
            )
        checkpoint.load(folder, self.accelerator)
        self.step, self.ptx_position = state["step"], state["ptx_position"]
        self.kl_controller.load_state_dict(state["kl_controller"])
        if state.get("reward_stats") is not None:
            self.reward_stats = tuple(state["reward_stats"])
        cpu_state, sampling_state = state["generators"][self.accelerator.process_index]
        self.generator.set_state(cpu_state)
        self.sampling_generator.set_state(sampling_state)
        log = self.work / outputs.LOG_FILE
        if log.exists() and self.accelerator.is_main_process:
            lines = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= step]
            log.write_text("".join(line + "\n" for line in lines))
        logger.info("resumed from %s (step %d of %d)", folder, step, self.args.num_updates)
        return True

    def _log(self, stats: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with (self.work / outputs.LOG_FILE).open("a") as f:
            f.write(json.dumps({"step": self.step, **stats}) + "\n")
        self.accelerator.log(stats, step=self.step)

    def train(self) -> None:
        """Run the remaining updates, logging each one."""
        logger.info(
            "%d updates of %d episodes (%d per process: %d mini-batches of %d per device x %d accumulation)",
            *(self.args.num_updates, self.args.batch_size, self.args.local_batch_size, self.args.num_mini_batches),
            *(self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps),
        )
        bar = tqdm(
            total=self.args.num_updates,
            initial=self.step,
            desc="ppo",
            unit="step",
            disable=not self.accelerator.is_main_process,
        )
        save_every = int(self.args.save_steps) if self.args.save_strategy != "no" else 0
        while self.step < self.args.num_updates:
            started = time.monotonic()
            rollout, stats = self.rollout(self.step)
            stats = self._mean_over_ranks({**stats, **self.learn(rollout)})
            stats["objective/kl_coef"] = self.kl_controller.value
            self.kl_controller.update(stats["objective/kl"], self.args.batch_size)
            self.step += 1
            stats["episode"] = self.step * self.args.batch_size
            stats["seconds"] = time.monotonic() - started
            self._log(stats)
            bar.update()
            bar.set_postfix(
                score=f"{stats['objective/rm_score']:.2f}",
                kl=f"{stats['objective/kl']:.2f}",
                **({"gold": f"{stats['objective/gold']:.3f}"} if "objective/gold" in stats else {}),
            )
            if save_every and (self.step % save_every == 0) and self.step < self.args.num_updates:
                self.save_checkpoint()
        bar.close()
