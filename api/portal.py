"""The portal page (GET /): static ES modules and CSS shipped in the package, no build step.

Every answer of the app carries a strict Content-Security-Policy: the page loads nothing
but its own files and talks to nothing but this origin."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PORTAL_DIR = Path(__file__).parent / "portal"
STATIC_PREFIX = "/portal"

# No 'unsafe-inline' anywhere: scripts are modules from this origin, styles one stylesheet.
# img-src admits data: for the icons wallets announce through EIP-6963.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def page(request: web.Request) -> web.FileResponse:
    # Revalidated on each load, so a new release's page never meets stale modules.
    return web.FileResponse(PORTAL_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(STATIC_PREFIX + "/"):
        response.headers.setdefault("Cache-Control", "no-cache")


def setup_portal(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_static(STATIC_PREFIX, PORTAL_DIR, append_version=False)
    app.on_response_prepare.append(add_security_headers)
