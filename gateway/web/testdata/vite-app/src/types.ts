// Compile-time checks of the package's declarations (tsc, never bundled): the line after
// each expect-error directive must be a type error, so that a declaration that has become
// `any` (or lost a type) fails the build with "Unused '@ts-expect-error' directive".
import { Herald, HeraldError, buildURL, closeAction } from "@heraldgw/client";
import type { HeraldEventMap, PresenceAnswer, PresenceEvent, StateDetail } from "@heraldgw/client";

export async function typeChecks(h: Herald): Promise<void> {
  const ack: { id: string } = await h.publish("news", { text: "hello" });
  await h.publish(null, "to everyone");
  // @ts-expect-error a channel is a string or null
  await h.publish(42, {});
  // @ts-expect-error the ack's id is a string
  const n: number = ack.id;

  h.addEventListener("join", (ev) => {
    const p: PresenceEvent = ev.detail;
    // @ts-expect-error users are strings
    const first: number = p.users[0];
    void first;
  });
  h.addEventListener("state", (ev) => {
    const d: StateDetail = ev.detail;
    // @ts-expect-error "gone" is not a state
    if (d.state === "gone") return;
  });
  // @ts-expect-error a message event's detail is a MessageFrame, not a number
  h.addEventListener("message", (ev: CustomEvent<number>) => ev.detail);
  // Other event types stay allowed, as on any EventTarget.
  h.addEventListener("custom", (ev: Event) => ev.type);

  const answer: PresenceAnswer = await h.presenceAll("room", { limit: 100, maxPages: 3 });
  // @ts-expect-error total is a number
  const total: string = answer.total;

  const action: "stop" | "token" | "fatal" | "slow" | "reconnect" = closeAction(4008);
  const url: string = buildURL("wss://gw.example/ws", { channels: ["a"], since: 5 });
  const err = new HeraldError("forbidden", "no");
  const detail: HeraldEventMap["error"]["detail"] = err;
  // @ts-expect-error the constructor takes a URL and options
  new Herald({ url: "/ws" });
  void [n, total, action, url, detail];
}
