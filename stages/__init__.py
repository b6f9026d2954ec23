"""The workflow's stages: each `stages/<name>.py` exposes `run(inputs, cfg) -> <Name>Result` (stages.result).

Stages use prvos_core and Ray (all of it in the private stages._ray); they know nothing of rounds, run stores or
MLflow (that is `pipelines`).
"""
