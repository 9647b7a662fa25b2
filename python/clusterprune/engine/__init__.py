"""The compute engine: the Rust core's typed front (:mod:`.rust`) and the array-namespace backend
that runs the same k-means with NumPy or CuPy (:mod:`.xp`), the host steps shared with Rust."""

from .rust import INITS, WARD_MAX_N, KMeansResult, kmeans, top_k

__all__ = ["INITS", "WARD_MAX_N", "KMeansResult", "kmeans", "top_k"]
