"""``WinRateEvaluation``: held-out win rates, reward and KL under a judge, plus a table of samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from rlhf_lightning.callbacks.plots import plot_history
from rlhf_lightning.data.encoding import response_text
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.guards import require_finite
from rlhf_lightning.generation import SamplingParams
from rlhf_lightning.module import require_rlhf_module
from rlhf_lightning.rewards import RewardSource, check_columns, is_pointwise, win_rate
from rlhf_lightning.step_metrics import logger_step

FIELD = "trainer.callbacks[WinRateEvaluation].init_args"


class EvaluationHistory:
    """Mixin for an evaluation callback: its ``history`` (one dict per evaluation) is saved in checkpoints, so that
    a resumed run's history and plots keep the evaluations from before the crash."""

    history: list[dict]

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class WinRateEvaluation(EvaluationHistory, Callback):
    """Evaluate the policy on held-out prompts every ``every_n_rollouts`` batches and at the end.

    For each prompt it decodes the policy's response, the reference policy's (the SFT model's)
    response and takes the data set's reference response; the judge scores all three. Reported
    (logged as ``eval/*`` and, at the end, written to ``summary.json``):

    - ``win_rate_vs_sft``: share of prompts where the judge prefers the policy to the SFT model (ties ½);
    - ``win_rate_vs_reference``: the same against the data set's reference responses;
    - ``reward``: mean judge score of the policy's responses (``sft_reward``, ``reference_reward``: of the SFT
      model's and the data set's reference responses; ``oracle_reward``: of the judge's best responses, when it
      knows them, :meth:`~rlhf_lightning.rewards.RewardSource.best_responses`, e.g. the embedded task's oracle);
    - ``kl``: mean ``ln π_θ(y|x) − ln π_ref(y|x)`` over responses sampled from ``π_θ`` at temperature 1,
      an unbiased estimate of KL(π_θ‖π_ref).

    Args:
        judge: the reward source that judges; by default the module's own reward.
        split: data split to evaluate (``test`` at the end; ``validation`` is used during training when set).
        num_prompts: prompts evaluated (``null`` = the whole split).
        every_n_rollouts: also evaluate on the validation split every this many rollout batches (0 = only at the end).
        max_new_tokens: response length limit.
        temperature: decoding temperature of the compared responses (0 = greedy).
        batch_size: prompts per generation batch.
        num_samples_logged: rows of the sample table logged at each evaluation.
    """

    def __init__(self, judge: Optional[RewardSource] = None, split: str = "test", num_prompts: Optional[int] = None,
                 every_n_rollouts: int = 0, max_new_tokens: int = 53, temperature: float = 0.0,
                 batch_size: int = 64, num_samples_logged: int = 8) -> None:
        problems = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature).problems(FIELD)
        if batch_size < 1:
            problems.append(RecipeError(f"{FIELD}.batch_size", f"must be ≥ 1, got {batch_size}"))
        if every_n_rollouts < 0:
            problems.append(RecipeError(f"{FIELD}.every_n_rollouts", f"must be ≥ 0, got {every_n_rollouts}"))
        raise_all(problems)
        self.judge = judge
        self.split = split
        self.num_prompts = num_prompts
        self.every_n_rollouts = every_n_rollouts
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.num_samples_logged = num_samples_logged
        self._sft_cache: dict[str, tuple[list[str], Tensor]] = {}
        self._oracle_cache: dict[str, Optional[Tensor]] = {}
        self.history: list[dict] = []

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module = require_rlhf_module(pl_module, "trainer.callbacks[WinRateEvaluation]")
        if self.judge is None and pl_module.reward is None:
            raise RecipeError(f"{FIELD}.judge",
                              "nothing to judge the responses with: no judge and no reward source",
                              "set judge, e.g. class_path: rlhf_lightning.tasks.summarize.GoldJudge")
        if not is_pointwise(self.judge or pl_module.reward):
            raise RecipeError(f"{FIELD}.judge",
                              "the evaluation judge scores single responses, but the reward is a preference "
                              "model (it only compares responses)",
                              "set judge to a pointwise reward, e.g. class_path: rlhf_lightning.tasks.summarize.GoldJudge")
        pl_module.reference_for_evaluation = True  # win rate vs SFT and KL need the starting policy
        self._check_eval_rows(trainer, pl_module)
        if self.judge is not None:
            self.judge.setup(trainer.strategy.root_device)

    def _check_eval_rows(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Before training: the held-out prompts exist and hold every column the judge (and the training
        reward, tracked as the proxy) asks for."""
        splits = [self.split] + ([self.periodic_split(trainer.datamodule)] if self.every_n_rollouts else [])
        for split in dict.fromkeys(splits):
            rows = trainer.datamodule.eval_rows(split, self.num_prompts)  # a RecipeError naming the field if missing
            available = list(rows[0].get("columns", {})) if rows else []
            if rows and all("input_ids" in row for row in rows):
                pl_module.require_context(max(len(row["input_ids"]) for row in rows), self.max_new_tokens,
                                        f"{FIELD}.max_new_tokens")
            for key, source in ((f"{FIELD}.judge", self.judge), ("model.init_args.reward", pl_module.reward)):
                if source is not None and is_pointwise(source):  # the evaluation scores these prompts with it
                    check_columns(source, available, key, f"the '{split}' prompts")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        done = rollout_batches_done(trainer)
        if self.every_n_rollouts and done % self.every_n_rollouts == 0:
            self.evaluate(trainer, pl_module, self.periodic_split(trainer.datamodule), step=done)

    def periodic_split(self, datamodule) -> str:
        """The split of the evaluations during training: ``validation`` when the data has validation prompts,
        else :attr:`split`. An offline data module's validation split holds training-format rows (pairs, SFT
        examples), and its evaluations always read ``eval_prompt_file``: they are labelled :attr:`split`."""
        offline = hasattr(datamodule, "eval_prompts")
        return "validation" if "validation" in getattr(datamodule, "splits", {}) and not offline else self.split

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.final_evaluation(trainer, pl_module)

    def final_evaluation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Evaluate on ``split`` and put the results in the summary; write the history and its plot (the end of
        training, and the ``evaluate`` command)."""
        step = rollout_batches_done(trainer) if trainer.state.fn == "fit" else pl_module._rollout_batches
        results = self.evaluate(trainer, pl_module, self.split, step=step)
        pl_module.summary.update({key: round(value, 4) for key, value in results.items()})
        pl_module.summary["eval_prompts"] = self._num_evaluated
        pl_module.summary["eval_split"] = self.split
        self._write_history(trainer)

    # ------------------------------------------------------------------ evaluation
    def _rank_rows(self, trainer: Trainer, split: str) -> tuple[list[dict], int]:
        """This rank's share of the evaluation rows, and how many of them are its own.

        Every rank gets the same number of rows (a short share is topped up with copies of the first row,
        whose results are dropped before gathering): under sharded weights each generate and forward is a
        collective step that all ranks must take together.
        """
        rows = trainer.datamodule.eval_rows(split, self.num_prompts)
        self._num_evaluated = len(rows)
        own = rows[trainer.global_rank::trainer.world_size]
        width = -(-len(rows) // trainer.world_size)
        return own + [rows[0]] * (width - len(own)) if rows else own, len(own)

    def _decode(self, pl_module: LightningModule, rows: list[dict], use_reference: bool,
                temperature: float) -> tuple[list[str], Tensor, Tensor, int]:
        """Responses for ``rows``: texts, prompt+response ids, attention mask, prompt width (one batch)."""
        batch = trainer_collate(pl_module, rows)
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=temperature)
        with pl_module.precision_context():  # the precision the policy trains in (autocast under *-mixed)
            generation = pl_module.generate(batch["input_ids"], batch["attention_mask"], params,
                                            use_reference=use_reference)
        texts = pl_module.tokenizer.batch_decode(generation.responses, skip_special_tokens=True)
        ids = torch.cat([batch["input_ids"], generation.responses], 1)
        attention = torch.cat([batch["attention_mask"], generation.response_mask], 1)
        return texts, ids, attention, batch["input_ids"].shape[1]

    def _responses(self, pl_module: LightningModule, rows: list[dict], use_reference: bool) -> list[str]:
        texts: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            texts += self._decode(pl_module, rows[start:start + self.batch_size], use_reference, self.temperature)[0]
        return texts

    def _kl(self, pl_module: LightningModule, rows: list[dict]) -> Tensor:
        values = []
        for start in range(0, len(rows), self.batch_size):
            _, ids, attention, width = self._decode(pl_module, rows[start:start + self.batch_size], False, 1.0)
            with torch.no_grad(), pl_module.precision_context():
                logp, _ = pl_module.policy_logprobs(ids, attention, width)
                ref = pl_module.reference_logprobs(ids, attention, width)
            values.append((logp - ref).sum(-1))
        return torch.cat(values) if values else torch.zeros(0)

    def evaluate(self, trainer: Trainer, pl_module: LightningModule, split: str, step: int) -> dict[str, float]:
        judge = self.judge or pl_module.reward
        rows, own = self._rank_rows(trainer, split)
        prompts = [r["prompt"] for r in rows]
        data_columns = trainer_collate(pl_module, rows)["columns"] if rows else {}

        def score(source: RewardSource, texts: list[str]) -> Tensor:  # pointwise, seeing the data's columns
            return source.score_terms(prompts, texts, 1, **data_columns)[0].float()

        policy_texts = self._responses(pl_module, rows, use_reference=False)
        if split not in self._sft_cache:  # the reference policy is frozen: decode it once
            sft_texts = self._responses(pl_module, rows, use_reference=True)
            self._sft_cache[split] = (sft_texts, score(judge, sft_texts))
        sft_texts, sft_scores = self._sft_cache[split]
        scores = score(judge, policy_texts)
        proxy = pl_module.reward if self.judge is not None and pl_module.reward is not None else None
        if proxy is not None and not is_pointwise(proxy):
            proxy = None
        proxy_scores = score(proxy, policy_texts).cpu() if proxy is not None else None
        has_reference = all("reference" in r for r in rows)
        ref_scores = score(judge, [response_text(r["reference"]) for r in rows]) if has_reference else None
        kl = self._kl(pl_module, rows).cpu()

        if split not in self._oracle_cache:  # the judge's best responses, when it knows them (a synthetic task)
            best = judge.best_responses(prompts) if hasattr(judge, "best_responses") else None
            self._oracle_cache[split] = score(judge, best) if best is not None else None
        oracle_scores = self._oracle_cache[split]
        named = {"policy": scores, "sft": sft_scores, "kl": kl, "reference": ref_scores, "oracle": oracle_scores,
                 "proxy": proxy_scores}
        named = {name: column for name, column in named.items() if column is not None}
        stacked = torch.stack([column.cpu() for column in named.values()], 1)[:own]  # [n, columns]
        gathered = gather_rows(pl_module, stacked)
        require_finite("evaluation score", gathered, pl_module._batch_number)  # every rank holds all rows
        column = {name: gathered[:, index] for index, name in enumerate(named)}
        results = {
            "win_rate_vs_sft": win_rate(column["policy"], column["sft"]),
            "reward": column["policy"].mean().item(),
            "sft_reward": column["sft"].mean().item(),
            "kl": column["kl"].mean().item(),
        }
        if "reference" in column:
            results["win_rate_vs_reference"] = win_rate(column["policy"], column["reference"])
            results["reference_reward"] = column["reference"].mean().item()
            results["sft_win_rate_vs_reference"] = win_rate(column["sft"], column["reference"])
        if "oracle" in column:  # the most the judge gives: how far the policy is from the best it can do
            results["oracle_reward"] = column["oracle"].mean().item()
        if "proxy" in column:  # the training reward (e.g. a learned reward model) next to the judge's
            results["proxy_reward"] = column["proxy"].mean().item()
        self._log(trainer, results, step, split)
        self._log_samples(trainer, prompts, policy_texts, sft_texts, rows, scores, sft_scores, step, split)
        self.history.append({"rollouts": step, "split": split, **results})
        return results

    # ------------------------------------------------------------------ logging
    @rank_zero_only
    def _log(self, trainer: Trainer, results: dict[str, float], step: int, split: str) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in results.items()}, step=logger_step(trainer))
        summary = ", ".join(f"{k}={v:.3f}" for k, v in results.items())
        print(f"[{split} evaluation after {step} rollout batches] {summary}", flush=True)

    @rank_zero_only
    def _log_samples(self, trainer: Trainer, prompts, policy_texts, sft_texts, rows, scores, sft_scores, step,
                     split: str) -> None:
        n = min(self.num_samples_logged, len(prompts))
        table = [[step, split, prompts[i], policy_texts[i], round(scores[i].item(), 4), sft_texts[i],
                  round(sft_scores[i].item(), 4), rows[i].get("reference", "")] for i in range(n)]
        columns = ["rollouts", "split", "prompt", "policy", "policy_score", "sft", "sft_score", "reference"]
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key="eval/samples", columns=columns, data=table, step=logger_step(trainer))
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        with (root / "samples.jsonl").open("a") as handle:
            for row in table:
                handle.write(json.dumps(dict(zip(columns, row))) + "\n")

    @rank_zero_only
    def _write_history(self, trainer: Trainer) -> None:
        root = Path(trainer.default_root_dir)
        (root / "eval_history.json").write_text(json.dumps(self.history, indent=2))
        plot_history(self.history, root / "eval_curves.png")


def rollout_batches_done(trainer: Trainer) -> int:
    """Rollout (training) batches completed so far in this run, resumed runs included."""
    return trainer.fit_loop.epoch_loop.batch_progress.total.processed


def trainer_collate(pl_module: LightningModule, rows: list[dict]) -> dict:
    """Left-padded prompt batch on the module's device, via the data module's collate."""
    datamodule = pl_module.trainer.datamodule
    batch = (datamodule.collate_prompts if hasattr(datamodule, "collate_prompts") else datamodule.collate)(rows)
    return {k: (v.to(pl_module.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def gather_rows(pl_module: LightningModule, values: Tensor) -> Tensor:
    """Concatenate per-process ``[n_i, C]`` rows across processes (``n_i`` may differ by one)."""
    trainer = pl_module.trainer
    if trainer.world_size == 1:
        return values
    count = torch.tensor([values.shape[0]], device=pl_module.device)
    counts = pl_module.all_gather(count).reshape(-1)
    width = int(counts.max())
    padded = torch.zeros(width, values.shape[1], device=pl_module.device)
    padded[: values.shape[0]] = values.to(pl_module.device)
    everything = pl_module.all_gather(padded)  # [world, width, C]
    return torch.cat([everything[r, : int(counts[r])] for r in range(everything.shape[0])]).cpu()

