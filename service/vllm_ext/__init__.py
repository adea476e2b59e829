"""kvsched's batch formers inside vLLM's own scheduler (issue 7; docs/vllm.md).

`service.vllm_ext.scheduler.KvschedScheduler` is the class to pass to
`vllm serve --scheduler-cls`. Only the modules of this package import vLLM, and only
`scheduler` and `queue` do so at module level: importing this package needs no vLLM.
"""
