"""What works on a trained policy or a finished run: Hugging Face export (:mod:`.export`), held-out evaluation
(:mod:`.evaluation`) and training-curve plots (:mod:`.plots`)."""
