"""Webhooks: where they may go (addresses), how they are signed (signing), and the outbox's
delivery (delivery). The events themselves are written by triggers (migration 0014)."""
