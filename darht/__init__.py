"""darht: distilling adversarial robustness from heterogeneous teachers.

Every model takes float images in [0, 1], NCHW, and returns logits; attacks and eps live in
[0, 1] pixel space. See README.md for the command line.
"""

__version__ = "0.1.0"
