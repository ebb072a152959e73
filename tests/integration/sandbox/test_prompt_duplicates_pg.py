"""PromptSession is idempotent on the turn id also when the same turn arrives several times at once
(on PostgreSQL). The task service re-sends a message's prompt whenever its DeliverMessage work item
is delivered again, and two copies can be handled at the same moment (tests/e2e/test_mesh_faults.py).
Each call answers OK with the one turn, and the agent gets the prompt once; a call that failed
instead (a `pk_turns` violation answered INTERNAL) would make the task service mark the message
failed and its session ERROR, although the turn runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import session_event_pb2 as K

from services.platform.settings import Settings
from tests.helpers.infra import make_pg_database
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import sandbox_stub
from tests.unit.sandbox.gitrepo import make_origin
from tests.unit.sandbox.test_sessions import start_session, watch_until_turn_ends

pytestmark = pytest.mark.integration

COPIES = 12  # of each prompt, sent at once
ROUNDS = 5  # prompts (turn ids); the race is not lost every time


async def test_concurrent_prompts_with_one_turn_id_all_answer_the_one_turn(
    settings_factory: Callable[..., Settings], amqp_url: str, tmp_path: Path
) -> None:
    async with make_pg_database() as db_url:  # its own: other tests create sandbox acme/t1 too
        settings = settings_factory(database_url=db_url, amqp_url=amqp_url)
        await _scenario(settings, tmp_path)


async def _scenario(settings: Settings, tmp_path: Path) -> None:
    async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
        session = await start_session(stub, make_origin(tmp_path))
        texts = [f"say hi {n}" for n in range(ROUNDS)]
        for n, text in enumerate(texts):
            request = pb.PromptSessionRequest(name=session, turn_id=f"m{n}", text=text, user="users/1001")

            answers = await asyncio.gather(*(stub.PromptSession(request) for _ in range(COPIES)))

            assert {a.turn.name for a in answers} == {f"{session}/turns/m{n}"}
        await watch_until_turn_ends(stub, session, turns=ROUNDS)
        listed = await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))
        prompts = [e.text for e in listed.session_events if e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE]
        assert prompts == texts
