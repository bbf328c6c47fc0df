"""One job: its spec, its stages, and the share that lets ``top_k`` siblings rank once."""

from .rank import CandidateShare
from .run import run_job
from .spec import JobResult, JobSpec
from .write import write_scores, write_trec

__all__ = ["CandidateShare", "JobResult", "JobSpec", "run_job", "write_scores", "write_trec"]
