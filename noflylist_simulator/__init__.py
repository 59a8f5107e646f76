"""Simulated peers for tests and local development; never part of the production image."""
