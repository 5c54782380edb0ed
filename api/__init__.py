"""The runner's HTTP API: routes, wallet auth, errors, the OpenAPI document."""
