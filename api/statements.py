"""The API's own statements: wallet sessions -- nonces, tokens and tickets, stored only as
hashes (auth_nonces, sessions, auth_tickets) -- and the readiness probe. Positional
parameters are listed above each statement. (Jobs' statements are the runner's.)"""

from __future__ import annotations

# Whether the database answers at all.
PING = "SELECT 1"

# $1 nonce, $2 its lifetime (s).
ISSUE_NONCE = """
INSERT INTO auth_nonces (nonce, expires_at) VALUES ($1, now() + make_interval(secs => $2))
RETURNING expires_at"""

# $1 nonce, $2 token hash, $3 address, $4 the session's lifetime (s): the nonce is consumed
# and the session opened in one statement; no row when the nonce is not valid.
LOGIN = """
WITH used AS (
    DELETE FROM auth_nonces WHERE nonce = $1 AND expires_at > now() RETURNING 1)
INSERT INTO sessions (token_hash, address, expires_at)
SELECT $2, $3, now() + make_interval(secs => $4) FROM used
RETURNING expires_at"""

# $1 token hash: its live session.
SESSION = """
SELECT address, expires_at FROM sessions
WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()"""

# $1 token hash, $2 channel, $3 payload: every instance is told, if a session was revoked.
REVOKE = """
WITH revoked AS (
    UPDATE sessions SET revoked_at = now()
    WHERE token_hash = $1 AND revoked_at IS NULL RETURNING 1)
SELECT pg_notify($2, $3) FROM revoked"""

# $1 ticket hash, $2 token hash, $3 its lifetime (s).
ISSUE_TICKET = """
INSERT INTO auth_tickets (ticket_hash, token_hash, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at"""

# $1 ticket hash: used up, and its session if the ticket and the session are both valid.
REDEEM_TICKET = """
DELETE FROM auth_tickets t USING sessions s
WHERE t.ticket_hash = $1 AND t.expires_at > now() AND s.token_hash = t.token_hash
  AND s.revoked_at IS NULL AND s.expires_at > now()
RETURNING s.address, s.expires_at, s.token_hash"""

# What can no longer be used (a revoked session is kept a day, for the audit's sake).
CLEANUP = (
    "DELETE FROM auth_nonces WHERE expires_at < now()",
    "DELETE FROM auth_tickets WHERE expires_at < now()",
    "DELETE FROM sessions WHERE expires_at < now() OR revoked_at < now() - interval '1 day'",
)
