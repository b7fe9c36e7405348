"""A small client for OpenAI-compatible chat endpoints (vLLM, llama.cpp server, hosted APIs).

Standard library only, so the data generator and the LLM stage share it without extra installs.
Retries transient failures (connection errors, timeouts, 429, 5xx) with exponential backoff and
fails at once on other 4xx answers, whose message it passes on.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


class ChatError(RuntimeError):
    pass


@dataclass(frozen=True)
class ChatConfig:
    url: str = ""  # base URL, e.g. http://localhost:8000/v1
    model: str = ""
    api_key: str = ""
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.5
    temperature: float = 0.7
    max_tokens: int = 512

    @classmethod
    def from_env(cls, **overrides) -> "ChatConfig":
        """Options win over ASTRA_LLM_URL / ASTRA_LLM_MODEL / ASTRA_LLM_KEY (or OPENAI_API_KEY)."""
        env = {"url": os.environ.get("ASTRA_LLM_URL", ""),
               "model": os.environ.get("ASTRA_LLM_MODEL", ""),
               "api_key": os.environ.get("ASTRA_LLM_KEY", os.environ.get("OPENAI_API_KEY", ""))}
        env.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return cls(**env)


@dataclass(frozen=True)
class ChatReply:
    text: str
    prompt_tokens: int
    completion_tokens: int


def chat(cfg: ChatConfig, messages: list[dict[str, str]], **params) -> ChatReply:
    if not cfg.url:
        raise ChatError("no endpoint URL: pass --llm-url or set ASTRA_LLM_URL")
    body = json.dumps({"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                       "max_tokens": cfg.max_tokens, **params}).encode()
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    url = cfg.url.rstrip("/") + "/chat/completions"
    last = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
                data = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:300].decode('utf-8', 'replace')}"
            if e.code == 429 or e.code >= 500:
                continue
            raise ChatError(f"{url}: {last}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            continue
        except json.JSONDecodeError:
            last = "the answer is not JSON"
            continue
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ChatError(f"{url}: answer has no choices[0].message.content") from None
        usage = data.get("usage") or {}
        return ChatReply(text or "", int(usage.get("prompt_tokens", 0)),
                         int(usage.get("completion_tokens", 0)))
    raise ChatError(f"{url}: gave up after {cfg.retries + 1} attempts; last error: {last}")
