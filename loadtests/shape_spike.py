"""Locust shape file (see loadtests/shapes.py):

locust -f loadtests/embeddings.py,loadtests/shape_spike.py --host URL
"""

from loadtests.shapes import SpikeShape

__all__ = ["SpikeShape"]
