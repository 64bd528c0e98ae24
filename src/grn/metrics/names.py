"""Names shared by the metric modules, in a module that imports nothing, so that the feature extractors, FID and the
evaluation protocol agree on them without importing one another."""

DIGITS_EXTRACTOR_NAME = "grn-digits"  # the digits stand-in for Inception; grn.metrics.digits_extractor registers it
