"""The organization summary projection: applying task and github-data events, and reading it back.

apply.apply_event(session, routing_key, body)   one event, inside the caller's transaction
read.read_summary(session, org_id)              the OrganizationSummary at the session's snapshot
read.summary_items(session, org_id)             the same, as Watch snapshot items
"""

from services.organization.usecases.projection.apply import ROUTING_KEYS, apply_event
from services.organization.usecases.projection.read import read_summary, summary_items

__all__ = ["ROUTING_KEYS", "apply_event", "read_summary", "summary_items"]
