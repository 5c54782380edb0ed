"""No input makes the service answer 500: seeded random bodies, query strings and
headers against every route of a live instance; every refusal has the JSON error shape."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from tests.client import Api

STRINGS = [
    "",
    "demo",
    "gpu",
    "x" * 600,
    "0x" + "ab" * 20,
    "../../etc/passwd",
    "\u0000",
    "💥",
    "queued",
    "running",
    "true",
    "null",
    "1e309",
    "-1",
    str(uuid.uuid4()),
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bool", "none"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 64, 65, 86400, 86401, 2**63, -(2**70)])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, 3.14])
    if kind == "str":
        return rng.choice(STRINGS)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [
        "executions",
        "backend",
        "input",
        "name",
        "timeout_s",
        "metadata",
        "reason",
        "statuses",
        "message",
        "signature",
        rng.choice(STRINGS),
    ]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _body(rng: random.Random) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.6:
        return json.dumps(_value(rng)).encode(), "application/json"
    if roll < 0.7:  # the shape a real submit has, with random parts
        execs = [
            {"backend": rng.choice(["demo", "nope", 5]), "input": _value(rng)}
            for _ in range(rng.randint(0, 3))
        ]
        return json.dumps({"executions": execs, "timeout_s": _value(rng)}).encode(), "application/json"
    if roll < 0.85:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))), "application/json"
    return b"a=b", rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])


async def test_random_input_never_gets_a_500(api: Api) -> None:
    rng = random.Random(20261121)
    job = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    execution = job["executions"][0]["id"]
    paths = [
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("POST", "/jobs/cancel"),
        ("GET", f"/jobs/{job['id']}"),
        ("GET", f"/jobs/{job['id']}/audit"),
        ("POST", f"/jobs/{job['id']}/cancel"),
        ("POST", f"/jobs/{job['id']}/executions/{execution}/cancel"),
        ("POST", "/auth/login"),
        ("GET", "/auth/me"),
        ("POST", "/auth/ticket"),
        ("GET", "/jobs/%00"),
        ("DELETE", "/jobs"),
        ("PUT", f"/jobs/{job['id']}"),
    ]
    seen: dict[int, int] = {}
    for _ in range(400):
        method, path = rng.choice(paths)
        query = "?" + "&".join(
            f"{rng.choice(['limit', 'status', 'cursor', 'wait', 'ticket'])}="
            f"{rng.choice(STRINGS).replace('&', '')}"
            for _ in range(rng.randint(0, 2))
        )
        data, ctype = _body(rng)
        headers = {**api.headers, "Content-Type": ctype}
        if rng.random() < 0.1:
            headers["Idempotency-Key"] = rng.choice(STRINGS[:5]) or "k"
        if rng.random() < 0.05:
            headers["Authorization"] = rng.choice(["Bearer", "Bearer x y", "Basic abc", ""])
        async with api.http.request(method, api.base + path + query, data=data, headers=headers) as resp:
            seen[resp.status] = seen.get(resp.status, 0) + 1
            assert resp.status < 500, (method, path, query, data[:200], await resp.text())
            if resp.status >= 400:
                body = await resp.json()
                assert body["ok"] is False and body["error"] and body["message"], body
    # The fuzzing reached both sides: accepted requests and refusals of several kinds.
    assert len([s for s in seen if s < 300]) >= 1 and len([s for s in seen if s >= 400]) >= 3, seen
