"""The portal's files as the service serves them (the page itself is tested in a browser,
tests/browser/)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import aiohttp

from api.portal import PORTAL_DIR

ROOT = Path(__file__).parents[2]


async def test_the_page_and_its_modules_are_served_under_a_strict_policy(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async with http.get(f"{base_url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
        policy = resp.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "<script>" not in page and " style=" not in page  # nothing inline for the policy to allow
    async with http.get(f"{base_url}/portal/js/main.js") as resp:
        assert resp.status == 200
        assert resp.content_type in ("text/javascript", "application/javascript")  # module scripts need it
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/portal/../api/portal.py", "/portal/%2e%2e/portal.py", "/portal/nothing.js"):
        async with http.get(f"{base_url}{path}") as resp:
            assert resp.status in (403, 404), path
    async with http.get(f"{base_url}/jobs") as resp:
        assert resp.status == 401  # the API's routes are not the page's


def test_every_portal_file_ships_in_the_package() -> None:
    """A file the package-data globs miss would be absent from a non-editable install."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    files = [p.relative_to(PORTAL_DIR.parent).as_posix() for p in PORTAL_DIR.rglob("*") if p.is_file()]
    assert files
    missed = [
        f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)
    ]
    assert missed == []
