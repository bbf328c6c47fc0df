"""rerank-eval: does this reranker, at this candidate depth, on this data, make retrieval better, and at what cost?"""

__version__ = "0.1.0"
