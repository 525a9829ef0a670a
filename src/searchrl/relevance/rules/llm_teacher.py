"""LLM CoT teacher over an OpenAI-compatible /v1/chat/completions endpoint.

TaoSR1 had a large LLM write the CoT from the retrieved rules; this is that
option for users who have an endpoint (OpenAI, vLLM, llama.cpp, ...). The LLM is
told the gold grade and asked for a completion in our five-step format; the
answer is parsed and must carry the gold grade and consistent step verdicts
(parser.is_consistent). An unusable answer is sent back once with the problems
listed; after `parse_attempts` failures, or when the endpoint stays down, the
rule teacher writes the example instead. Every outcome is counted in `stats`.

Every HTTP 200 answer is cached on disk under sha256(model, messages), so a
rerun never pays for the same call twice. Requests retry with exponential
backoff on 429, 5xx, timeouts and connection errors; other 4xx (bad key, bad
model) raise at once, since retrying them only burns quota.

Simplifies: stdlib urllib and a thread pool (no async client); the LLM always
writes label-first and the completion is re-rendered with build_completion, so
the stored target has exactly our format and the configured order.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from searchrl.data.schema import GRADE_NAMES
from searchrl.errors import UserError
from searchrl.relevance.format.parser import RULE_TABLE, grade_implied_by_verdicts, is_consistent, parse_completion
from searchrl.relevance.format.prompt import STEP_GUIDE, PromptConfig, build_completion, product_block
from searchrl.relevance.rules.teacher import RuleTeacher, TeacherOutput

SYSTEM_PROMPT = (
    "You write short, factual relevance explanations for an electronics shop's search engine. "
    "You are given a query, a product and the grade human annotators gave. Justify exactly that grade. "
    "Answer with nothing but: the grade token (<L1>, <L2>, <L3> or <L4>) on the first line, then these five "
    "lines, each ending with ' => key: value':\n" + STEP_GUIDE + "\n"
    "intent and type are one lower_case_word (use _ between words). Notes are one line each and never contain '=>'.\n"
    "The grade must be allowed by the category and attribute verdicts:\n" +
    "\n".join(f"category {c}, attribute {a}: {' or '.join(f'L{g}' for g in sorted(allowed))}"
              for (c, a), (_, allowed) in RULE_TABLE.items())
)


class LLMError(UserError, RuntimeError):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class LLMTeacherConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # server root or its /v1; "/chat/completions" is appended
    model: str = "gpt-4o-mini"  # model name sent to the endpoint (and part of the cache key)
    api_key_env: str = "OPENAI_API_KEY"  # env var with the key; unset or empty = no Authorization header
    timeout_s: float = 60.0  # per HTTP request
    max_retries: int = 4  # extra attempts on 429 / 5xx / timeout / connection error
    backoff_s: float = 1.0  # first wait between attempts; doubles each time
    max_backoff_s: float = 30.0  # cap on one wait (also caps a server's Retry-After)
    max_workers: int = 4  # concurrent requests in write_many
    cache_dir: str | None = None  # directory of cached answers; None = no cache
    temperature: float = 0.0  # deterministic answers make the cache meaningful
    max_tokens: int = 512  # five short lines fit easily
    parse_attempts: int = 2  # LLM answers tried (the later ones with feedback) before the rule teacher takes over

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class LLMTeacher:
    """Teacher protocol over a chat endpoint, with cache, retries, validation and a rule-teacher fallback."""

    def __init__(self, cfg: LLMTeacherConfig, prompt_cfg: PromptConfig | None = None, fallback=None):
        self.cfg, self.prompt_cfg = cfg, prompt_cfg or PromptConfig()
        if fallback is None:
            from searchrl.relevance.rules.engine import RuleEngine

            fallback = RuleTeacher(RuleEngine.from_yaml(), self.prompt_cfg, on_disagree="condition")
        self.fallback = fallback
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "llm_written": 0, "unusable_answers": 0,
                      "fallback": 0, "endpoint_failed": 0}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    # ------------------------------------------------------------------ messages and cache
    def messages(self, query: str, product: dict, gold: int) -> list[dict]:
        prompt = product_block(query, product, self.prompt_cfg)  # our instruction is replaced by SYSTEM_PROMPT
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"{prompt}\n\nHuman grade: L{gold} ({GRADE_NAMES[gold]}). "
                                            "Write the six lines that justify this grade."}]

    def cache_key(self, messages: list[dict]) -> str:
        blob = json.dumps({"model": self.cfg.model, "messages": messages}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return self.cache / key[:2] / f"{key}.json" if self.cache else None

    def complete(self, messages: list[dict]) -> str:
        """The assistant text for `messages`, from the cache or the endpoint."""
        path = self._cache_path(self.cache_key(messages))
        if path is not None and path.exists():
            try:
                text = json.loads(path.read_text())["content"]
                self._count("cache_hits")
                return text
            except (OSError, ValueError, KeyError):
                pass  # a torn or foreign file: ask again and overwrite it
        reply = self._post({"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                            "max_tokens": self.cfg.max_tokens})
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            text = ""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"model": self.cfg.model, "messages": messages, "content": text}))
            os.replace(tmp, path)  # atomic: concurrent writers never leave half a file
        return text

    # ------------------------------------------------------------------ HTTP
    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(payload).encode()
        for attempt in range(self.cfg.max_retries + 1):
            wait = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** attempt)
            self._count("requests")
            try:
                request = urllib.request.Request(self.cfg.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace")[:200] if exc.fp else ""
                error = LLMError(f"{self.cfg.url}: HTTP {exc.code}: {body}", exc.code == 429 or exc.code >= 500)
                if not error.retryable:
                    raise error from exc
                retry_after = (exc.headers or {}).get("Retry-After", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = min(self.cfg.max_backoff_s, max(wait, float(retry_after)))
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
                error = LLMError(f"{self.cfg.url}: {type(exc).__name__}: {exc}", retryable=True)
            if attempt == self.cfg.max_retries:
                raise error
            self._count("retries")
            time.sleep(wait)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ teacher protocol
    def write(self, query: str, product: dict, gold_grade: int) -> TeacherOutput | None:
        gold = int(gold_grade)
        messages = self.messages(query, product, gold)
        for attempt in range(self.cfg.parse_attempts):
            try:
                text = self.complete(messages)
            except LLMError as exc:
                if not exc.retryable:
                    raise
                self._count("endpoint_failed")
                break
            parsed = parse_completion(text, "label_first")
            problems = list(parsed.format_errors)
            if parsed.grade != gold:
                problems.append(f"the grade token must be <L{gold}>")
            elif not is_consistent(gold, parsed.verdicts):
                problems.append(f"category {parsed.verdicts.get('category')} with attribute "
                                f"{parsed.verdicts.get('attribute')} does not allow L{gold}")
            if not problems:
                self._count("llm_written")
                verdicts = {**parsed.verdicts, "verdict": f"L{gold}"}
                implied = grade_implied_by_verdicts(verdicts)
                return TeacherOutput(completion=build_completion(gold, verdicts, parsed.notes, self.prompt_cfg),
                                     teacher_grade=implied, agreed=implied == gold, verdicts=verdicts)
            self._count("unusable_answers")
            messages = messages + [{"role": "assistant", "content": text},
                                   {"role": "user", "content": "Not usable: " + "; ".join(problems[:5]) +
                                    ". Answer again in exactly the required format."}]
        self._count("fallback")
        return self.fallback.write(query, product, gold)

    def write_many(self, items) -> list[TeacherOutput | None]:
        """write() for each (query, product, gold_grade), concurrently, results in input order."""
        items = list(items)
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_workers)) as pool:
            return list(pool.map(lambda item: self.write(*item), items))
