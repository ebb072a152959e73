"""Agent choice: CreateTask and CreateSession check a named agent against the sandbox service's
ListAgents (a cheap bounded read of its configuration, reused for a few seconds), so a typo or an
agent that is not installed is refused at once with a clear error instead of a session in ERROR
later. An empty agent means the configured default and is not checked."""

from __future__ import annotations

from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.task.domain.errors import AgentCredentialsMissing, AgentNotInstalled, invalid
from services.task.usecases.deps import Deps

log = get_logger(__name__)
DEADLINE_SECONDS = 2.0
REUSE_SECONDS = 10.0


async def check_agent(
    deps: Deps,
    agent: str,
    field: str,
    *,
    model: str = "",
    model_field: str = "model",
    runnable: bool = True,
    organization: str = "",
) -> None:
    """Check a named agent and model against ListAgents.

    Raises InvalidArgument (`field`) when `agent` (an id) is not an agent of this mesh, InvalidArgument
    (`model_field`) when the agent lists its models and `model` is not one of them, and
    FailedPrecondition `AGENT_NOT_INSTALLED` / `AGENT_CREDENTIALS_MISSING` when it cannot run here
    (unless `runnable` is False: ChangeModel checks only the model). An agent whose credentials the
    sandbox service lacks still runs when `organization` (an id) has one of its variables set
    (ListModelCredentials: names only, a bounded read made only then).
    An empty `agent` means the mesh's default agent: only the model is checked against it. When the
    sandbox service cannot answer (UNAVAILABLE, DEADLINE_EXCEEDED) the request goes on unchecked:
    creating a task must not depend on the sandbox service being up, and a bad agent still fails its
    session with the sandbox's message."""
    if not agent and not model:
        return
    try:
        agents = await deps.sandbox.list_agents(deadline=DEADLINE_SECONDS, max_age=REUSE_SECONDS)
    except FoundryError as exc:
        if not exc.retryable:
            raise
        log.warning("agent_not_checked", agent=agent, model=model, error=exc.message)
        return
    found = {a.name.removeprefix("agents/"): a for a in agents}
    if agent and agent not in found:
        known = ", ".join(a.name for a in agents) or "none"
        raise invalid(field, f"agents/{agent} is not an agent of this mesh (its agents: {known})")
    chosen = found.get(agent) if agent else next((a for a in agents if a.default), None)
    if chosen is None:
        return
    offered = [m.id for m in chosen.models]
    if model and offered and model not in offered:
        raise invalid(model_field, f"{chosen.name} offers the models {', '.join(offered)}, not {model!r}")
    if agent and runnable and not chosen.available:
        if not chosen.installed:
            raise AgentNotInstalled(agent, chosen.command)
        if organization and await _organization_has_key(
            deps, organization, list(chosen.credential_variables)
        ):
            return
        raise AgentCredentialsMissing(agent, chosen.unavailable_reason)


async def _organization_has_key(deps: Deps, organization: str, variables: list[str]) -> bool:
    """Whether the organization set one of `variables`; True when the organization service cannot
    answer in time (as for ListAgents: the session then fails with the sandbox's message)."""
    try:
        held = await deps.organization.model_credential_variables(
            organization=organization, deadline=DEADLINE_SECONDS
        )
    except FoundryError as exc:
        if not exc.retryable:
            raise
        log.warning("model_credentials_not_checked", organization=organization, error=exc.message)
        return True
    return any(v in held for v in variables)
