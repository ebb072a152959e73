"""The organization's model API keys reach its agents' environment and nothing else: the task service
sends them with StartAgentSession / PromptSession, the agent process gets them (over the service's
own), another sandbox's agent does not, users cannot send them, and they show in no event, log line
or command line."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from services.platform.identity import Caller
from services.platform.settings import Settings
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub
from tests.unit.sandbox.test_sessions import prompt, watch_until_turn_ends

KEY = "FOUNDRY_TEST_ORG_MODEL_KEY"
ALICE = Caller(subject="user/1001", login="alice")


def _settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        sandbox={
            "agents": {"fake": "foundry-fake-agent", "claude": "foundry-fake-agent"},
            "agent_credentials": {"claude": [KEY]},
        }
    )


async def _digest_seen(stub: pb_grpc.SandboxServiceAsyncStub, session: str, turn: str, turns: int) -> str:
    """What the agent's own child process reads in $KEY, as a SHA-256 (the key itself never goes
    into the transcript), and every event of the session as text."""
    await prompt(stub, session, turn, f'$ printf %s "${KEY}" | sha256sum')
    _, events = await watch_until_turn_ends(stub, session, turns=turns)
    return "\n".join(str(e) for e in events)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _cmdlines() -> str:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(out)


async def test_the_organizations_key_reaches_its_agent_only(
    settings_factory: Callable[..., Settings],
    origin: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(KEY, raising=False)  # the service's environment does not hold it
    secret = "sk-org-a-" + uuid.uuid4().hex
    async with (
        running(_settings(settings_factory), ["sandbox"]) as mesh,
        sandbox_stub(mesh) as stub,
        sandbox_stub(mesh, ALICE) as user_stub,
    ):
        a = await prepared_sandbox(stub, origin, sandbox_id="ta")
        b = await prepared_sandbox(stub, origin, sandbox_id="tb")

        # A user never names an agent's environment; an unknown variable is refused; nothing starts.
        with pytest.raises(grpc.aio.AioRpcError) as user:
            await user_stub.StartAgentSession(
                pb.StartAgentSessionRequest(
                    parent=a.name, session_id="s1", agent="agents/claude", environment={KEY: secret}
                )
            )
        assert user.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.StartAgentSession(
                pb.StartAgentSessionRequest(
                    parent=a.name, session_id="s1", agent="agents/claude", environment={"LD_PRELOAD": "/x"}
                )
            )
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Organization A's key: the agent (claude here, needing KEY) starts although the service has none.
        started = await stub.StartAgentSession(
            pb.StartAgentSessionRequest(
                parent=a.name, session_id="s1", agent="agents/claude", environment={KEY: secret}
            )
        )
        seen = await _digest_seen(stub, started.agent_session.name, "t1", 1)
        assert _sha(secret) in seen, seen
        assert secret not in seen
        assert secret not in _cmdlines()  # never in argv of any process

        # Organization B's hostile agent (no key sent for it; `fake` needs none) cannot read A's key.
        other = await stub.StartAgentSession(
            pb.StartAgentSessionRequest(parent=b.name, session_id="s1", agent="agents/fake")
        )
        seen_b = await _digest_seen(stub, other.agent_session.name, "t1", 1)
        assert _sha(secret) not in seen_b and _sha("") in seen_b
        probe = (
            f'for f in /proc/[0-9]*/environ; do grep -qs {secret[:20]} "$f" && echo LE""AK "$f"; done;'
            ' echo DO""NE'
        )
        await prompt(stub, other.agent_session.name, "t2", f"$ {probe}")
        _, events = await watch_until_turn_ends(stub, other.agent_session.name, turns=2)
        transcript = "\n".join(str(e) for e in events)
        assert "DONE" in transcript and "LEAK" not in transcript
        # The same probe in A's own sandbox finds its agent's key (so the probe can see one).
        await prompt(stub, started.agent_session.name, "t2", f"$ {probe}")
        _, events = await watch_until_turn_ends(stub, started.agent_session.name, turns=2)
        assert "LEAK" in "\n".join(str(e) for e in events)
        # ... and B's claude session is refused without a key of its own.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.StartAgentSession(
                pb.StartAgentSessionRequest(parent=b.name, session_id="s2", agent="agents/claude")
            )
        assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        for sandbox in (a, b):
            listed = await stub.ListSessionEvents(
                pb.ListSessionEventsRequest(parent=f"{sandbox.name}/sessions/s1")
            )
            assert secret not in str(listed)
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
