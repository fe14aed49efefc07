"""Feedback (CDS Hooks F1) and the record of every card shown, for acceptance analytics.

The parts: the recorder (a cards-issued listener that writes in the background), the feedback
route and its validation, and the report. The store they write to is `store/`; bootstrap.py
wires them together.
"""
