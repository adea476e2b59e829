"""ExeGPT planner (docs/planner.md): configuration types, XSimulator, XScheduler, baselines, shifts.

`config` holds the shared frozen types (also imported by the cluster simulation); `timing` the
pipeline/TP stage-time model; `xsim` the analytic predictor; `search` the branch and bound.
"""
