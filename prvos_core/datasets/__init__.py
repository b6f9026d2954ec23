"""Tools that make datasets in the Ref-YouTube-VOS layout: the synthetic set (`synth`, its scenes in
`synth_scene`), the seed's merged `new_<split>.json` (`merge_json`) and Ref-DAVIS17 (`davis`)."""
