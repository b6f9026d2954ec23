"""Running a trained model over videos: frame-by-frame propagation with a memory (`propagation`), the Ray-free
`Predictor` the teacher pool and evaluation wrap (`predict`), and `prvos predict` on a user's folder or MP4
(`video`, `video_io`)."""
