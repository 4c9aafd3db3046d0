"""Benchmarks: our models against peer libraries on HetRec (quality, fit time) and at scale on synthetic data."""
