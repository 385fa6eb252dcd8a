// A page of a frontend project that installs @heraldgw/client by its name, built by Vite
// (gateway/browser_vite_test.go loads the built page in Chromium against a gateway).
// It subscribes to the channel of its ?channel= (default "vite"), lists every message it
// receives, and leaves the client on window.herald for the test to publish with.
import { Herald, HeraldError, SUBPROTOCOL } from "@heraldgw/client";
import type { MessageFrame, HeraldState, WelcomeFrame } from "@heraldgw/client";

declare global {
  interface Window {
    herald: Herald;
  }
}

const channel = new URLSearchParams(location.search).get("channel") ?? "vite";
const stateEl = document.querySelector<HTMLElement>("#state")!;
const list = document.querySelector<HTMLUListElement>("#messages")!;

const herald = new Herald("/ws", { channels: [channel] });
window.herald = herald;

herald.addEventListener("state", (ev) => {
  const state: HeraldState = ev.detail.state;
  stateEl.dataset.state = state;
  stateEl.textContent = ev.detail.code === undefined ? state : `${state} (${ev.detail.code})`;
});

herald.addEventListener("welcome", (ev) => {
  const w: WelcomeFrame = ev.detail;
  document.title = `${w.node} ${SUBPROTOCOL}`;
});

herald.addEventListener("message", (ev) => {
  const m: MessageFrame = ev.detail;
  const li = document.createElement("li");
  li.dataset.id = m.id;
  li.dataset.channel = m.channel ?? "";
  if (m.offset !== undefined) li.dataset.offset = String(m.offset);
  li.textContent = JSON.stringify(m.data);
  list.append(li);
});

herald.addEventListener("error", (ev) => {
  const err: HeraldError = ev.detail;
  console.warn(`herald: ${err.code}: ${err.message}`);
});
