"""Locust shape file (see loadtests/shapes.py):

locust -f loadtests/embeddings.py,loadtests/shape_step.py --host URL
"""

from loadtests.shapes import StepShape

__all__ = ["StepShape"]
