// The console's shell: pages by address (#overview, #inspect, #live, #review), and the sign-in form shown
// whenever the service answers that a key is missing or wrong.

import { apiKey, clearApiKey, onUnauthorized, setApiKey } from "./api.js";
import * as inspect from "./inspect.js";
import * as live from "./live.js";
import * as overview from "./overview.js";
import * as recent from "./recent.js";
import * as review from "./review.js";

const PAGES = { overview, inspect, live, review };
const mounted = new Set();
let current = null;
let signingIn = false;

function pageName() {
  const name = location.hash.replace(/^#/, "").split("/")[0];
  return name in PAGES ? name : "overview";
}

function show() {
  if (signingIn) return;
  const name = pageName();
  for (const [other, page] of Object.entries(PAGES)) {
    const section = document.getElementById(`page-${other}`);
    if (other !== name) {
      if (current === other) page.hide?.();
      section.hidden = true;
    }
  }
  for (const link of document.querySelectorAll("#tabs a")) {
    link.classList.toggle("active", link.dataset.page === name);
  }
  const page = PAGES[name];
  const section = document.getElementById(`page-${name}`);
  if (!mounted.has(name)) {
    page.mount(section);
    mounted.add(name);
  }
  section.hidden = false;
  current = name;
  page.show(location.hash);
  document.getElementById("sign-out").hidden = !apiKey();
  recent.start();
}

function askForKey(reason) {
  if (signingIn) return;
  signingIn = true;
  recent.stop();
  for (const section of document.querySelectorAll(".page")) section.hidden = true;
  const error = document.getElementById("login-error");
  error.hidden = !apiKey(); // a key was sent and refused: say so
  error.textContent = reason;
  document.getElementById("login").hidden = false;
  document.getElementById("login-key").focus();
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(document.getElementById("login-key").value.trim());
  document.getElementById("login-key").value = "";
  document.getElementById("login").hidden = true;
  signingIn = false;
  show();
});

document.getElementById("sign-out").addEventListener("click", () => {
  clearApiKey();
  location.reload();
});

onUnauthorized(askForKey);
window.addEventListener("hashchange", show);
show();
