"""Monitoring: metrics sinks, FLOP/s and MFU accounting, static HTML reports."""
