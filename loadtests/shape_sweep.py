"""Locust shape file (see loadtests/shapes.py):

locust -f loadtests/embeddings.py,loadtests/shape_sweep.py --host URL
"""

from loadtests.shapes import SweepShape

__all__ = ["SweepShape"]
