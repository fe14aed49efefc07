"""Feedback (CDS Hooks F1) and the record of every card shown, for acceptance analytics.

`init_feedback(app, settings)` wires the three parts into the Flask app: the store (SQLAlchemy,
migrated with Alembic at start), the recorder (a cards-issued listener that writes in the
background) and the feedback route.
"""

from __future__ import annotations

from cds_service.feedback.setup import init_feedback

__all__ = ["init_feedback"]
