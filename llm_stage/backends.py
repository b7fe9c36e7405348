"""Where answers come from: a local transformers model (base + optional LoRA adapter) or any
OpenAI-compatible chat endpoint. Both behind `Backend.complete(messages, max_tokens)`.

The local backend loads a model directory with `from_pretrained`, exactly as a user's Qwen3-8B
directory loads: bf16 on GPUs that support it, float32 on CPU. Generation is greedy, so answers
are reproducible, and the answer's mean token probability is returned as its confidence.
Calls made at once from several threads (`parallel` of them: `localize` and the server make
that many) are generated as one left-padded batch (`llm_stage.batcher`); an endpoint gets
them as concurrent requests.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from data_gen.chat_client import ChatConfig, chat
from llm_stage.batcher import Batcher
from llm_stage.prompts import TokenCounter, approx_tokens


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    prob: float | None = None  # mean token probability of the answer, where known


DEFAULT_PARALLEL = 8  # calls in flight at once: a local batch, or concurrent requests


class Backend(Protocol):
    name: str
    count: TokenCounter
    parallel: int  # how many calls at once it serves well

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
                 device: str | None = None, parallel: int = DEFAULT_PARALLEL):
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
        self.parallel = parallel
        self._batcher = Batcher(self._generate, parallel)

    def prompt_ids(self, messages: list[dict[str, str]]):
        return self.tokenizer(chat_prompt(self.tokenizer, messages), add_special_tokens=False,
                              return_tensors="pt").input_ids

    def complete(self, messages: list[dict[str, str]], max_tokens: int = 256) -> Completion:
        """Greedy answer; generated with the other threads' calls of the moment as one batch."""
        return self._batcher.submit((self.prompt_ids(messages)[0], max_tokens))

    def _generate(self, requests: list[tuple[Any, int]]) -> list[Completion]:
        """One left-padded batch. Greedy, so each answer is the one it gets alone: a row stops
        at its own end-of-answer token or `max_tokens`, whatever the others do."""
        import torch
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        width = max(len(ids) for ids, _ in requests)
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, _) in enumerate(requests):
            ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=max(m for _, m in requests), do_sample=False,
                output_scores=True, return_dict_in_generate=True, pad_token_id=pad)
            scores = self.model.compute_transition_scores(out.sequences, out.scores,
                                                          normalize_logits=True)
        eos = set(_as_list(self.model.generation_config.eos_token_id))
        done = []
        for i, (row, max_tokens) in enumerate(requests):
            new = out.sequences[i, width:width + max_tokens].tolist()
            n = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))
            prob = float(torch.exp(scores[i, :n].float().mean())) if n else None
            done.append(Completion(self.tokenizer.decode(new[:n], skip_special_tokens=True),
                                   int(len(row)), n, prob))
        return done


def _as_list(x) -> list:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


class EndpointBackend:
    """Any OpenAI-compatible `/v1/chat/completions` server: vLLM, llama.cpp, a hosted API, or
    `astra-llm serve`. Greedy (temperature 0)."""

    def __init__(self, cfg: ChatConfig, count: TokenCounter = approx_tokens,
                 parallel: int = DEFAULT_PARALLEL):
        self.cfg = replace(cfg, temperature=0.0)
        self.count = count
        self.parallel = parallel
        # the model name too: one server can serve several (a gate is fitted for one)
        self.name = f"endpoint:{cfg.url}" + (f"#{cfg.model}" if cfg.model else "")

    def complete(self, messages: list[dict[str, str]], max_tokens: int = 256) -> Completion:
        r = chat(replace(self.cfg, max_tokens=max_tokens), messages)
        return Completion(r.text, r.prompt_tokens, r.completion_tokens, None)
