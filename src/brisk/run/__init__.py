"""A run's life around the training loop: its directory and lock, where it resumes from, its
checkpoints and records, stop signals, distributed plumbing, and the stages of its recipe."""
