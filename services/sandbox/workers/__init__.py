"""Queue handlers of the sandbox service: `run_turn` (queue `sandbox.turn`) and `refresh_git_state`
(queue `sandbox.git_state`)."""
