"""The worker: the claim loop and the job tasks (worker), the batched writes (batch), and
the statements it runs -- claims, results, leases, requeues (store)."""
