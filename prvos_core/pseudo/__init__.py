"""Pseudo-labels, from the teacher's probabilities to the student's labels: per-pixel uncertainty
(`uncertainty`), the round's class-balanced thresholds (`thresholds`), refinement into labels, weights and a frame
choice (`refine`, with the round's `RefineSummary`), their quality against ground truth (`quality`), and the Zarr
layouts, uint8 codec and frame-decision table they are stored in (`store`)."""
