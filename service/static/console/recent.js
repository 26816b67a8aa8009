// The service's recent decisions, polled from GET /recent every 1.5 s while the console is open; the
// Overview, Live and Review pages read them from here. De-duplicated by id (a cursor the service no longer
// knows brings the newest decisions again).

import { ApiError, getJson } from "./api.js";

const PERIOD_MS = 1500;
const KEEP = 500; // decisions kept in the page

export const recent = {
  decisions: new Map(), // id -> decision, oldest first
  categories: {}, // category -> {ok_last_hour, ng_last_hour, histogram}
  source: null,
  available: null, // false when the service does not record decisions
  error: null,
  updated: null,
};

let cursor = null;
let timer = null;
let running = false;
let inFlight = false;
const listeners = new Set();

export function subscribe(fn) {
  listeners.add(fn);
  fn(recent);
  return () => listeners.delete(fn);
}

function publish() {
  for (const fn of listeners) fn(recent);
}

/** Newest first. */
export function newest(count = KEEP) {
  return [...recent.decisions.values()].reverse().slice(0, count);
}

async function pollOnce() {
  const query = cursor ? `?since=${encodeURIComponent(cursor)}&limit=1000` : "?limit=200";
  const answer = await getJson(`recent${query}`);
  for (const d of answer.decisions) {
    recent.decisions.delete(d.id);
    recent.decisions.set(d.id, d);
  }
  while (recent.decisions.size > KEEP) recent.decisions.delete(recent.decisions.keys().next().value);
  recent.categories = answer.categories || {};
  recent.source = answer.source;
  recent.available = true;
  recent.error = null;
  recent.updated = new Date();
  cursor = answer.cursor;
  return answer.more;
}

async function tick() {
  timer = null;
  if (!running || inFlight) return;
  if (document.hidden) {
    timer = setTimeout(tick, PERIOD_MS); // a tab in the background asks nothing
    return;
  }
  inFlight = true;
  let again = false;
  try {
    again = await pollOnce();
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      recent.available = false; // a service without the live endpoints: stop asking
      running = false;
    } else if (err instanceof ApiError && err.status === 401) {
      running = false; // the console asks for a key and starts again
    }
    recent.error = err.message;
  }
  inFlight = false;
  publish();
  if (running && !timer) timer = setTimeout(tick, again ? 0 : PERIOD_MS);
}

export function start() {
  if (running) return;
  running = true;
  tick();
}

export function stop() {
  running = false;
  if (timer) clearTimeout(timer);
  timer = null;
}

/** Ask now (after scoring a part, say), without waiting for the next tick. */
export function refresh() {
  if (!running || inFlight) return;
  if (timer) clearTimeout(timer);
  tick();
}
