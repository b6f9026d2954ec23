"""A dataset on disk as records: the Ref-YouTube-VOS layout (`layout`), its JSON and files (`source`), palette
masks (`masks`), frames (`frames`), the checks and quarantine rules of ingest (`file_checks`, `validate`), the
Parquet manifest (`manifest`), stable expression ids (`ids`) and the training clips (`clips`)."""
