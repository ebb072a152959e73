"""Agent runtime of the sandbox service: the ACP client side (`pool`, `client`) and the project's own
offline agent (`fake_agent`, console script `foundry-fake-agent`)."""
