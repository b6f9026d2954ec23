"""The workflow's stages: each `stages/<name>.py` exposes `run(inputs, cfg) -> StageResult`.

Stages use prvos_core and Ray; they know nothing of rounds, run stores or MLflow (that is `pipelines`).
"""
