"""Synthetic card-transaction fraud domain with drift scenarios."""
