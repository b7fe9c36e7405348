"""A tiny model of the real architecture, built locally: a byte-level BPE tokenizer trained on
trace text, a small `Qwen3Config`, and a ChatML chat template like Qwen3's. Saved with
`save_pretrained`, it loads through the same `from_pretrained` path as a Qwen3-8B directory, so
tests and the demo exercise the production code without downloading weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from data_gen.trace import Trace

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_texts(traces: Iterable[Trace], budget: int = 1500) -> list[str]:
    """What the tiny model's tokenizer and pre-training read: the traces' steps, the answers of
    the labelled ones, and the focused prompt of each (its system message, task and step
    blocks). A real base tokenizer encodes a step header in a dozen tokens; one trained on log
    text alone spends ~90 on it, and half the simulated traces' prompts would not fit."""
    from llm_stage.prompts import SYSTEM, answer_json, focused_prompt
    from llm_stage.ranker import heuristic_candidates
    texts = [SYSTEM]
    for t in traces:
        texts += [s.content for s in t.steps]
        if t.label:
            texts.append(answer_json(t.label.agent, t.label.step, t.label.mode, t.label.reason))
        try:
            texts.append(focused_prompt(t, heuristic_candidates(t, 3), budget).messages[-1]
                         ["content"])
        except ValueError:  # headers alone overflow the budget: its steps are in already
            pass
    return texts


def build_tiny_model(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 1024,
                     hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     seed: int = 0, pretrain_steps: int = 0, seq_len: int = 256) -> Path:
    """Tokenizer from `texts`; with `pretrain_steps`, a short language-model pre-training on the
    same texts, so the model stands in for a pretrained base (a random base has logits too flat
    for LoRA alone to teach it a format in a few steps)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = list(texts)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, head_dim=hidden // heads,
                      max_position_embeddings=8192, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    if pretrain_steps:
        pretrain(model, tok, texts, pretrain_steps, seq_len, seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    return out


def pretrain(model, tok, texts: list[str], steps: int, seq_len: int, seed: int,
             batch_size: int = 8, lr: float = 3e-3) -> list[float]:
    """Plain next-token training on `texts` cut into windows; returns the loss curve."""
    import torch
    ids = tok("<|im_end|>".join(texts), add_special_tokens=False).input_ids
    data = torch.tensor(ids[: max(len(ids) // seq_len, 1) * seq_len]).view(-1, seq_len)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    curve = []
    for _ in range(steps):
        batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        curve.append(loss.item())
    model.eval()
    return curve
