"""Where answers come from: a local transformers model (base + optional LoRA adapter) or any
OpenAI-compatible chat endpoint. Both behind `Backend.complete(messages, max_tokens)`.

The local backend loads a model directory with `from_pretrained`, exactly as a user's Qwen3-8B
directory loads: bf16 on GPUs that support it, float32 on CPU. Generation is greedy, so answers
are reproducible, and the answer's mean token probability is returned as its confidence.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from data_gen.chat_client import ChatConfig, chat
from llm_stage.prompts import TokenCounter, approx_tokens


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    prob: float | None = None  # mean token probability of the answer, where known


class Backend(Protocol):
    name: str
    count: TokenCounter

    def complete(self, messages: list[dict[str, str]], max_tokens: int = 256) -> Completion: ...


def count_with(tokenizer) -> TokenCounter:
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def token_counter(tokenizer_dir: str | Path | None) -> TokenCounter:
    """Tokens by the tokenizer of a model directory, or the 4-characters estimate without one."""
    if not tokenizer_dir:
        return approx_tokens
    from transformers import AutoTokenizer
    return count_with(AutoTokenizer.from_pretrained(tokenizer_dir))


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The model's own chat template up to the assistant turn, thinking off (Qwen3)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)


def torch_dtype(device: str):
    import torch
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class LocalBackend:
    """A causal LM from a local directory, with an optional peft adapter on top."""

    def __init__(self, model_dir: str | Path, adapter: str | Path | None = None,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.count = count_with(self.tokenizer)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(self.device))
        if adapter is not None:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.to(self.device).eval()
        self.name = f"local:{model_dir.name}" + (f"+{Path(adapter).name}" if adapter else "")
        self._lock = threading.Lock()  # one generation at a time; callers queue on it

    def prompt_ids(self, messages: list[dict[str, str]]):
        return self.tokenizer(chat_prompt(self.tokenizer, messages), add_special_tokens=False,
                              return_tensors="pt").input_ids

    def complete(self, messages: list[dict[str, str]], max_tokens: int = 256) -> Completion:
        import torch
        ids = self.prompt_ids(messages).to(self.device)
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                do_sample=False, output_scores=True, return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            new = out.sequences[0, ids.shape[1]:]
            scores = self.model.compute_transition_scores(out.sequences, out.scores,
                                                          normalize_logits=True)[0]
        prob = float(torch.exp(scores.float().mean())) if len(scores) else None
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Completion(text, int(ids.shape[1]), int(len(new)), prob)


class EndpointBackend:
    """Any OpenAI-compatible `/v1/chat/completions` server: vLLM, llama.cpp, a hosted API, or
    `astra-llm serve`. Greedy (temperature 0)."""

    def __init__(self, cfg: ChatConfig, count: TokenCounter = approx_tokens):
        self.cfg = replace(cfg, temperature=0.0)
        self.count = count
        self.name = f"endpoint:{cfg.url}"

    def complete(self, messages: list[dict[str, str]], max_tokens: int = 256) -> Completion:
        r = chat(replace(self.cfg, max_tokens=max_tokens), messages)
        return Completion(r.text, r.prompt_tokens, r.completion_tokens, None)
