"""Telemetry generation: value pools built once, events composed from them as COPY rows."""
