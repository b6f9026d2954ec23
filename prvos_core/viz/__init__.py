"""Pictures for people: colour maps, overlays and strips (`pictures`) and one expression's pseudo-labels as a
strip of frames (`strip`), used by `prvos inspect` and `prvos predict`."""
