"""Validation: pandera schemas per table, cross-table checks and the failure report."""
