"""foundryctl's transcript printer shows what the service did: a message queued behind the running
turn, notices (an interrupted turn, a resumed session, an unsent message) and an interrupted end."""

from __future__ import annotations

from cli.render import TranscriptPrinter


def test_queued_messages_notices_and_an_interrupted_turn_read_as_words() -> None:
    out: list[str] = []
    printer = TranscriptPrinter(out.append)
    for seq, (kind, text, payload) in enumerate(
        [
            ("USER_MESSAGE", "$ sleep 30", {}),
            ("MESSAGE_QUEUED", "recall", {"ahead": 1}),
            ("NOTICE", "interrupted: the sandbox service stopped", {"notice": "turn_interrupted"}),
            ("TURN_COMPLETED", "", {"state": "interrupted"}),
            ("NOTICE", "agent fake restarted and resumed this session", {"notice": "session_loaded"}),
            ("USER_MESSAGE", "recall", {}),
        ],
        start=1,
    ):
        printer.event({"seq": seq, "kind": f"SESSION_EVENT_KIND_{kind}", "text": text, "payload": payload})
    printer.close()
    assert "".join(out).splitlines() == [
        "you: $ sleep 30",
        "you (queued): recall",
        "notice: interrupted: the sandbox service stopped",
        "── turn ended (interrupted)",
        "notice: agent fake restarted and resumed this session",
        "you: recall",
    ]
