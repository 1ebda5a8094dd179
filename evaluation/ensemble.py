"""The model `megadoc eval` scores: one checkpoint, or the logit-averaged ensemble of several (`--load A B ...`).

The paper ensembles as Kim et al. 2025 do (PAPER.md Appendix A, "logit averaging of K independently trained
members"): the members' logits are averaged and the softmax taken of the mean, which is not the same as averaging
their probabilities. `LogitAverage` puts K members behind one GPTModel-shaped module so Megatron's schedule, the loss
sets and lm-eval all score them through the same code, K = 1 included: an ensemble of K identical members computes
exactly one member's logits, hence exactly its losses.

A member is loaded by `training.checkpoints.load_model`, the one place a checkpoint (megadoc train's or
Megatron-Bridge's) becomes a model.
"""

from dataclasses import dataclass

import torch

from megadoc.errors import MegadocError
from megadoc.recipes.models import ParallelRecipe, padded_vocab_size
from megadoc.training.checkpoints import RunConfig, checkpoint_path, load_model, load_run_config


@dataclass(frozen=True)
class Member:
    """One checkpoint of an ensemble, before its model is built."""

    load: str
    """Checkpoint folder."""
    run: RunConfig
    """The run config saved beside it (model, tokenizer, how it attended)."""


def read_member(load: str) -> Member:
    """A checkpoint folder's run config, checked to hold a checkpoint (one line on failure, nothing built)."""
    checkpoint_path(load)
    return Member(load, load_run_config(load))


def check_members(members: list[Member]) -> None:
    """Members must agree on what a logit means and on what they read: vocabulary, tokenizer, context, masking."""
    first = members[0].run
    for member in members[1:]:
        run = member.run
        differences = [what for what, a, b in (
            ("vocabulary", padded_vocab_size(first.recipe.vocab_size, first.recipe.parallel.tensor_model_parallel_size),
             padded_vocab_size(run.recipe.vocab_size, run.recipe.parallel.tensor_model_parallel_size)),
            ("tokenizer", first.recipe.tokenizer, run.recipe.tokenizer),
            ("seq_length", first.recipe.model.seq_length, run.recipe.model.seq_length),
            ("cross-document attention", first.block_cross_document_attention, run.block_cross_document_attention),
        ) if a != b]
        if differences:
            raise MegadocError(f"{member.load}: differs from {members[0].load} in {', '.join(differences)}; an "
                               "ensemble's members must share them")


def load_member(member: Member, parallel: ParallelRecipe) -> tuple[torch.nn.Module, int]:
    """This rank's model of one member (either trainer's checkpoint), its weights loaded (resharded to `parallel`),
    and the checkpoint's iteration."""
    loaded = load_model(member.load, parallel)
    return loaded.model, loaded.iteration


class LogitAverage(torch.nn.Module):
    """K GPTModels as one: forward gives the mean of their logits ([b, s, vocab / TP]), or with `labels` the
    per-token cross-entropy of that mean ([b, s]), as a GPTModel would. Several members need PP = 1 (the mean is
    taken on logits, which only a last stage has)."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.config, self.model_type = members[0].config, members[0].model_type

    def set_input_tensor(self, input_tensor) -> None:
        for member in self.members:
            member.set_input_tensor(input_tensor)

    def forward(self, input_ids, position_ids, attention_mask, labels=None):
        from megatron.core import parallel_state, tensor_parallel

        outputs = [member(input_ids, position_ids, attention_mask) for member in self.members]
        if not parallel_state.is_pipeline_last_stage():
            return outputs[0]  # one member (checked): hidden states for the next stage
        logits = outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(dim=0)
        if labels is None:
            return logits
        losses = tensor_parallel.vocab_parallel_cross_entropy(  # [s, b] as GPTModel computes it
            logits.float().transpose(0, 1).contiguous(), labels.transpose(0, 1).contiguous())
        return losses.transpose(0, 1).contiguous()


def build_ensemble(members: list[Member], parallel: ParallelRecipe) -> tuple[LogitAverage, list[int]]:
    """Every member's model behind one LogitAverage, and their checkpoints' iterations."""
    if len(members) > 1 and parallel.pipeline_model_parallel_size > 1:
        raise MegadocError("an ensemble (several --load) evaluates at --pipeline-model-parallel-size 1: logits are "
                           "averaged on the last stage")
    loaded = [load_member(member, parallel) for member in members]
    return LogitAverage([model for model, _ in loaded]), [iteration for _, iteration in loaded]
