"""The product around the stages: run store, stage runner (fingerprints, commit markers, resume), MLflow
lineage and the `prvos` command line."""
