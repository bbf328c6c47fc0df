"""The shipped Hydra configs (found by Hydra as ``pkg://rerank_eval.conf``)."""
