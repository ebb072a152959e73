"""Use cases of the task service: each opens its own transaction(s) over the store, writes rows,
watch changes and outbox messages together, and calls peers only through `clients`."""
