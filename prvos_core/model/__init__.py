"""The RVOS network and what trains it: URVOS-style layers and model, named sizes, loss, EMA teacher, checkpoints.

Typical use: `model = build_model("tiny", text_dim=384)` (`prvos_core.model.builders`; "r50" with
`backbone_weights=<path>`); training: `clip_loss(model.forward_clip(frames, words, word_mask), labels,
weights).total` on logits (B,T,2,H,W) (`prvos_core.model.loss`). Frame-by-frame propagation, which the teacher
and `prvos predict` use, lives in `prvos_core.inference.propagation`.
"""
