"""PRVOS's ML core, Ray- and MLflow-free, laid out in the method's order.

Ground floor (imports no folder): `errors` (user errors vs bugs), `config` (the typed, frozen run config),
`labels` (the ignore value and the p > 0.5 rule), `storage` (local / fsspec paths, atomic writes, safe ids),
`progress`, `faults` (fault injection for the reliability tests) and `metrics` (J, F, J&F, P@X).

Folders, each importing only those before it: `data/` (a dataset on disk -> manifest records -> training clips)
-> `text/` (expression embeddings and their cache) -> `model/` (the URVOS network, loss, EMA teacher,
checkpoints) -> `inference/` (propagation through a video, the Ray-free `Predictor`, `prvos predict`);
`pseudo/` (uncertainty, thresholds, refinement, quality, the Zarr stores of pseudo-labels and refined labels)
needs only the ground floor. Beside them: `datasets/` (synthetic data and converters, -> data/) and `viz/`
(pictures, -> data/, pseudo/). Two named exceptions: `data/clips` reads `pseudo/store` (training reads refined
labels) and `inference/video` draws `prvos predict`'s overlay with `viz/pictures`. tests/test_imports.py
holds the table and fails on a cycle or an arrow against it.
"""
