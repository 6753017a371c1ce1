from .core import ClassifierConfig, ImageClassifier

__all__ = ["ClassifierConfig", "ImageClassifier"]
