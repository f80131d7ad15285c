"""Atheris fuzz targets for the two parsers that read untrusted text: the rule language and request bodies."""
