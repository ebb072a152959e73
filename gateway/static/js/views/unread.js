// Unread: opening a task marks the session it shows as read for the caller, and the sidebar shows a
// dot on each task with a session unread for the caller.
//
// A session becomes unread for a user when a turn someone else started finishes, and only for
// users who have a state on the task (the task service's `users_with_state`), so opening a task
// also records the caller as one of its viewers. The organization summary is a shared projection
// (`SessionSummary.unread` is false there), so the dots come from the caller's own topic
// `unread:organizations/{org}` (TaskService.WatchUserTaskStates: a snapshot of the caller's
// UserTaskStates in the organization, then each change; the gateway keys it by the signed-in user,
// so no other user's state can reach this page). Nothing is polled.

import { api, get } from "../api.js";
import { items } from "../stream.js";

// The names of the tasks that have a session unread in the state of an `unread:` topic.
export function unreadTasks(state) {
  const out = new Set();
  for (const s of items(state, "foundry.task.v1.UserTaskState")) {
    if ((s.sessions || []).some((x) => x.unread)) out.add(s.name.split("/userStates/")[0]);
  }
  return out;
}

// Read the caller's state of `taskName` once and mark `sessionName` read if it is unread or has
// no state yet. Resolves to whether a write was made.
export async function openedSession(taskName, sessionName) {
  const { userTaskState: state } = await get(`/v1/${taskName}/userStates/me`);
  const mine = (state?.sessions || []).find((s) => s.name.startsWith(`${sessionName}/userStates/`));
  if (mine && !mine.unread) return false;
  await api("PATCH", `/v1/${sessionName}/userStates/me?updateMask=unread`, { unread: false });
  return true;
}
