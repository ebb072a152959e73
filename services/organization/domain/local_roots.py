"""Which server directories a user may connect as a local organization (pure path rules).

A local organization hands its directory's repositories to the mesh: every member can read them
through tasks. So the directory must be one the operator allowed (`Settings.local_roots`, where
`{user}` stands for the caller's user id) and never one of the mesh's own: its data directory or the
sandbox root, nor a directory that holds them (the sync reads each child of the root). Paths given
here are already resolved (`os.path.realpath`), so a symlink cannot lead out of an allowed root.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

from services.organization.domain.errors import DOMAIN
from services.platform.errors import InvalidArgument, PermissionDenied


def expand_roots(allowed: Iterable[str], user_id: str) -> list[PurePosixPath]:
    """The allowed roots for `user_id` (`{user}` replaced)."""
    return [PurePosixPath(root.replace("{user}", user_id)) for root in allowed]


def _inside(path: PurePosixPath, root: PurePosixPath) -> bool:
    return path == root or path.is_relative_to(root)


def check_local_root(
    resolved: str, *, allowed: Sequence[PurePosixPath], protected: Sequence[PurePosixPath]
) -> None:
    """Raise unless `resolved` may be connected.

    Raises:
        PermissionDenied `LOCAL_ROOTS_DISABLED`: the operator allowed no root (production default).
        PermissionDenied `ROOT_NOT_ALLOWED`: outside every allowed root.
        InvalidArgument `ROOT_PROTECTED`: the mesh's data directory or sandbox root, inside one of
            them, or a directory holding one of them.
    """
    path = PurePosixPath(resolved)
    if not allowed:
        raise PermissionDenied(
            "connecting local directories is disabled on this server (FOUNDRY_LOCAL_ROOTS is empty)",
            reason="LOCAL_ROOTS_DISABLED",
            domain=DOMAIN,
        )
    if not any(_inside(path, root) for root in allowed):
        shown = ", ".join(str(r) for r in allowed)
        raise PermissionDenied(
            f"{resolved} is outside the directories this server lets you connect ({shown})",
            reason="ROOT_NOT_ALLOWED",
            domain=DOMAIN,
            metadata={"allowed_roots": shown},
        )
    for own in protected:
        if _inside(path, own) or _inside(own, path):
            raise InvalidArgument(
                f"root_path: {resolved} is or holds the mesh's own data ({own}); connect a directory "
                "of your repositories instead",
                reason="ROOT_PROTECTED",
                domain=DOMAIN,
                field_violations={"root_path": "is or holds the mesh's own data"},
            )


def overlaps(a: str, b: str) -> bool:
    """True when one directory is the other or lies inside it."""
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return _inside(pa, pb) or _inside(pb, pa)
