"""Feature extractors: the pipeline SDK plugins build their steps with."""
