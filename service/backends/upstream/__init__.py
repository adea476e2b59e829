"""The `openai-upstream` engine: kvsched's gateway in front of OpenAI-compatible servers (issue 7).

`UpstreamBackend` holds requests at the gateway and lets the policy's batch former decide which
one goes to which upstream (vLLM, SGLang), planned against each upstream's KV and offered to the
least-loaded first (load read from the upstreams' /metrics), and streams /v1/completions back
as TokenEvents. See docs/serving-upstream.md.
"""

from service.backends.upstream.backend import UpstreamBackend
from service.backends.upstream.tokenizer import load_tokenizer

__all__ = ["UpstreamBackend", "load_tokenizer"]
