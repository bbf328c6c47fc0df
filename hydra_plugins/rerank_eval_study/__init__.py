"""rerank-eval's Hydra sweeper for named studies (``hydra/sweeper=study``), found by Hydra's plugin discovery."""
