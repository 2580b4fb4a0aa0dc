"""pytest-speedbench: does speculative decoding really speed up your serving engine?"""

__version__ = "0.1.0"
