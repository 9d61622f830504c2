"""Evaluation above what it measures: harvest (docstring questions) and harvest_git (commit questions),
datasets (questions, splits, JSONL), metrics (recall, MRR, recorded runs), eval_index (the derived
indexes questions are asked against), tuning (fusion weights chosen on the train split)."""
