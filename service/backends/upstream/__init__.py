"""The `openai-upstream` engine: kvsched's gateway in front of OpenAI-compatible servers (issue 7).

`UpstreamBackend` queues requests in the policy's order, admits each to an upstream (vLLM,
SGLang) only while its projected KV fits, routes by load read from the upstreams' /metrics, and
streams /v1/completions back as TokenEvents. See docs/serving-upstream.md.
"""

from service.backends.upstream.backend import UpstreamBackend
from service.backends.upstream.tokenizer import load_tokenizer

__all__ = ["UpstreamBackend", "load_tokenizer"]
