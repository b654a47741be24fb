"""cnnablate: measured answers to the questions of a course chapter on convolutional networks."""

__version__ = "0.1.0"
