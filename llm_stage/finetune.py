"""`finetune`: LoRA on a causal LM from a local directory, with transformers' Trainer.

The loss covers the answer tokens only (prompt positions are labelled -100). Checkpoints go to
`OUT/checkpoints` and a rerun resumes from the newest one. The adapter is saved to `OUT/adapter`
with `astra_llm.json` (prompt version, base model, LoRA and training settings, metrics), which
`localize` and `serve` check before they use it. Multi-GPU: run the same command under
`accelerate launch` or `torchrun`; Trainer does the rest (docs/fine_stage.md).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from llm_stage.backends import chat_prompt
from llm_stage.prompts import PROMPT_VERSION

META_FILE = "astra_llm.json"


@dataclass(frozen=True)
class FinetuneConfig:
    base_model: str
    out_dir: str
    epochs: float = 2.0
    max_steps: int = -1  # overrides epochs when > 0
    lr: float = 2e-4
    batch_size: int = 1
    grad_accum: int = 8
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj")
    max_length: int = 6144
    gradient_checkpointing: bool = True
    save_steps: int = 50
    logging_steps: int = 10
    seed: int = 0


def encode_example(tokenizer, messages: list[dict[str, str]], max_length: int
                   ) -> dict[str, list[int]] | None:
    """input_ids / labels for one chat row; labels are -100 except on the answer and its end
    token. None when the row does not fit in `max_length`."""
    p_ids = tokenizer(chat_prompt(tokenizer, messages[:-1]), add_special_tokens=False).input_ids
    a_ids = tokenizer(messages[-1]["content"], add_special_tokens=False).input_ids + \
        [tokenizer.eos_token_id]
    if len(p_ids) + len(a_ids) > max_length:
        return None
    return {"input_ids": p_ids + a_ids, "labels": [-100] * len(p_ids) + a_ids}


class Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]):
        import torch
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def finetune(cfg: FinetuneConfig, train_rows: list[dict], eval_rows: list[dict],
             progress: bool = True) -> tuple[dict, object]:
    """Train, save the adapter; returns the metrics and the trained (peft) model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(cfg.base_model)
    enc = [encode_example(tok, r["messages"], cfg.max_length) for r in train_rows]
    train_set = [e for e in enc if e is not None]
    eval_set = [e for e in (encode_example(tok, r["messages"], cfg.max_length)
                            for r in eval_rows) if e is not None]
    if not train_set:
        raise ValueError(f"no training row fits in max_length={cfg.max_length} tokens")
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(
        cfg.base_model, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=0.05, lr_scheduler_type="cosine", logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=2, eval_strategy="no", bf16=use_bf16,
        report_to=[], seed=cfg.seed, remove_unused_columns=False, disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      data_collator=Collator(tok.pad_token_id))
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)
    metrics = {"train_loss": result.training_loss, "steps": result.global_step,
               "train_rows": len(train_set), "skipped_too_long": len(enc) - len(train_set),
               "resumed_from": last,
               "loss_curve": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
    if eval_set:
        metrics["eval_loss"] = trainer.evaluate(eval_set)["eval_loss"]
    adapter = out / "adapter"
    model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    (adapter / META_FILE).write_text(json.dumps(
        {"prompt_version": PROMPT_VERSION, "base_model": str(cfg.base_model),
         "config": dataclasses.asdict(cfg), "metrics": metrics}, indent=1))
    return metrics, model


def check_adapter(adapter: str | Path) -> dict:
    """The adapter's metadata; refuses an adapter trained on another prompt version."""
    meta_path = Path(adapter) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{adapter}: no {META_FILE}; not an adapter from `astra-llm "
                                "finetune`")
    meta = json.loads(meta_path.read_text())
    if meta.get("prompt_version") != PROMPT_VERSION:
        raise ValueError(f"{adapter}: trained on prompts {meta.get('prompt_version')!r}, this "
                         f"version builds {PROMPT_VERSION!r}; fine-tune again")
    return meta
