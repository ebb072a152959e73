"""GetFileContent over real gRPC: one file of a prepared checkout (nested, truncated at 1 MiB, binary),
and what an agent could plant in its checkout to make the service read the host (symlinks to
/etc/passwd, a symlinked directory, a FIFO) or leave it (`..`, absolute paths) refused unread; members
of other organizations are refused."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from services.platform.settings import Settings
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub
from tests.unit.sandbox.test_terminal import sign_in

MIB = 1 << 20


async def _read(stub: pb_grpc.SandboxServiceAsyncStub, sandbox: str, path: str) -> pb.GetFileContentResponse:
    return await stub.GetFileContent(pb.GetFileContentRequest(name=sandbox, path=path))


async def _refused(stub: pb_grpc.SandboxServiceAsyncStub, sandbox: str, path: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _read(stub, sandbox, path)
    return refused.value


async def test_reads_a_file_a_nested_one_a_large_one_cut_at_1_mib_and_a_binary_one(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin)
    work = Path(sandbox.checkout.path)

    readme = await _read(stub, sandbox.name, "README.md")
    assert readme.content == b"# demo\nline two\n"
    assert (readme.path, readme.size_bytes, readme.truncated, readme.binary) == (
        "README.md",
        16,
        False,
        False,
    )

    nested = await _read(stub, sandbox.name, "./src//app.py")
    assert (nested.path, nested.content) == ("src/app.py", b"print('hello')\n")

    (work / "big.txt").write_bytes(b"abcdefgh\n" * (MIB // 9 + 1000))  # an uncommitted file, > 1 MiB
    big = await _read(stub, sandbox.name, "big.txt")
    assert big.truncated and len(big.content) == MIB and big.size_bytes == (MIB // 9 + 1000) * 9
    assert big.content == (work / "big.txt").read_bytes()[:MIB] and not big.binary

    (work / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    blob = await _read(stub, sandbox.name, "blob.bin")
    assert blob.binary and not blob.truncated and blob.size_bytes == 16 + 256
    (work / "late-nul.txt").write_bytes(b"a" * 9000 + b"\x00")  # a NUL past the first 8 KiB
    assert not (await _read(stub, sandbox.name, "late-nul.txt")).binary

    (work / "empty").write_bytes(b"")
    empty = await _read(stub, sandbox.name, "empty")
    assert (empty.content, empty.size_bytes, empty.truncated, empty.binary) == (b"", 0, False, False)

    missing = await _refused(stub, sandbox.name, "src/nope.py")
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "src/nope.py" in (missing.details() or "")
    directory = await _refused(stub, sandbox.name, "src")
    assert directory.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "directory" in (directory.details() or "")


async def test_paths_leaving_the_checkout_and_links_an_agent_planted_are_refused_unread(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path, tmp_path: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin)
    work = Path(sandbox.checkout.path)
    secret = tmp_path / "host-secret.txt"  # a host file outside every sandbox
    secret.write_text("host-secret-7c1f\n")
    (work / "passwd").symlink_to("/etc/passwd")
    (work / "secret").symlink_to(secret)
    (work / "etc").symlink_to("/etc")  # a symlinked directory component
    (work / "hostdir").symlink_to(tmp_path)
    (work / "srclink").symlink_to("src")  # even a link that stays inside is not followed
    (work / "src" / "up").symlink_to("..")

    for path, code in {
        "../README.md": grpc.StatusCode.INVALID_ARGUMENT,
        "src/../../x": grpc.StatusCode.INVALID_ARGUMENT,
        "/etc/passwd": grpc.StatusCode.INVALID_ARGUMENT,
        "": grpc.StatusCode.INVALID_ARGUMENT,
        ".": grpc.StatusCode.INVALID_ARGUMENT,
        "a\x00b": grpc.StatusCode.INVALID_ARGUMENT,
        "passwd": grpc.StatusCode.FAILED_PRECONDITION,
        "secret": grpc.StatusCode.FAILED_PRECONDITION,
        "etc/passwd": grpc.StatusCode.FAILED_PRECONDITION,
        "hostdir/host-secret.txt": grpc.StatusCode.FAILED_PRECONDITION,
        "srclink/app.py": grpc.StatusCode.FAILED_PRECONDITION,
        "src/up/README.md": grpc.StatusCode.FAILED_PRECONDITION,
    }.items():
        refused = await _refused(stub, sandbox.name, path)
        assert refused.code() == code, (path, refused.details())
        details = refused.details() or ""
        assert "root:" not in details and "host-secret-7c1f" not in details
    link = await _refused(stub, sandbox.name, "etc/passwd")
    assert "symbolic link" in (link.details() or "")


async def test_a_fifo_in_the_checkout_is_refused_without_being_opened(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin)
    fifo = Path(sandbox.checkout.path, "pipe")
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:  # blocks until a reader opens the FIFO
        with open(fifo, "wb"):
            opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        refused = await asyncio.wait_for(_refused(stub, sandbox.name, "pipe"), timeout=10)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "FIFO" in (refused.details() or "")
        await asyncio.sleep(0.2)
        assert not opened.is_set(), "the service opened the FIFO"
    finally:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # let the writer go
        thread.join(timeout=5)
        os.close(reader)


async def test_only_members_of_the_organization_read_a_file(
    settings_factory: Callable[..., Settings], origin: Path, tmp_path: Path
) -> None:
    roots = tmp_path / "roots"
    for name in ("alice", "bob"):
        (roots / name).mkdir(parents=True)
    settings = settings_factory(local_roots=[str(roots)])
    async with running(settings, ["organization", "sandbox"]) as mesh:
        alice = await sign_in(mesh, "alice", root=roots / "alice", org_id="acme")
        bob = await sign_in(mesh, "bob", root=roots / "bob", org_id="bobs")  # a member elsewhere only
        mallory = await sign_in(mesh, "mallory")  # a member of nothing
        async with sandbox_stub(mesh) as service:
            sandbox = (await prepared_sandbox(service, origin)).name
        async with sandbox_stub(mesh, alice) as as_alice:
            assert (await _read(as_alice, sandbox, "README.md")).content == b"# demo\nline two\n"
        for stranger in (bob, mallory):
            async with sandbox_stub(mesh, stranger) as other:
                for path in ("README.md", "../x", "nope"):
                    refused = await _refused(other, sandbox, path)
                    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, (stranger.login, path)
                    assert "demo" not in (refused.details() or "")
