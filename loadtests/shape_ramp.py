"""Locust shape file (see loadtests/shapes.py):

locust -f loadtests/embeddings.py,loadtests/shape_ramp.py --host URL
"""

from loadtests.shapes import RampShape

__all__ = ["RampShape"]
