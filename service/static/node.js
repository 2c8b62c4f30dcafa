// The DICOM node's health (what the Grafana row shows) and its dead letters, with "retry".
import { call, element, setStatus } from "./api.js";

export function startNode() {
  const state = document.getElementById("node-state");
  const stats = document.getElementById("node-stats");
  const deadStatus = document.getElementById("dead-status");
  const retryAll = document.getElementById("retry-all");
  retryAll.addEventListener("click", () => retry({}));

  async function refresh() {
    try {
      const health = await call("/node/health");
      setStatus(state, health.running
        ? `Node ${health.ae_title} on port ${health.port}: running (updated ${health.age_s} s ago)`
        : `Node ${health.ae_title}: not running (last seen ${Math.round(health.age_s)} s ago)`,
      health.running ? "done" : "error");
      const items = [
        ["Associations", `${health.associations.accepted} accepted · ${health.associations.rejected} rejected`],
        ["Studies waiting for their quiet time", health.studies.waiting],
        ["Studies being scored", health.studies.scoring],
        ["Studies scored", health.studies.scored],
        ["Scoring failures", health.studies.failed],
        ["Images", `${health.images.scored} scored · ${health.images.skipped} skipped · ` +
          `${health.images.out_of_domain ?? 0} out of domain · ${health.images.failed} failed`],
        ["Results sent", health.objects_sent],
        ["Send failures", health.send_failures],
        ["Waiting to be sent", health.outbox],
        ["Dead letters", health.dead_letters],
      ];
      stats.replaceChildren(...items.map(([name, value]) =>
        element("div", { class: "stat" }, element("dt", { text: name }), element("dd", { text: String(value) }))));
    } catch (error) {
      setStatus(state, error.reason === "node_not_seen" ? "No DICOM node has run here yet." : `Node: ${error.message}`,
        error.reason === "node_not_seen" ? "" : "error");
      stats.replaceChildren();
    }
    try {
      const letters = (await call("/node/dead-letters")).dead_letters;
      retryAll.hidden = letters.length < 2;
      document.getElementById("dead-body").replaceChildren(...letters.map((letter) => element("tr", {},
        element("td", { text: letter.destination }),
        element("td", { text: letter.name }),
        element("td", { text: letter.dead_since }),
        element("td", {}, element("button", { type: "button", class: "button secondary", text: "Retry",
          "aria-label": `Send ${letter.name} to ${letter.destination} again`,
          onclick: () => retry({ destination: letter.destination, name: letter.name }) })))));
      if (!letters.length && !deadStatus.textContent) setStatus(deadStatus, "None.");
      else if (letters.length && deadStatus.textContent === "None.") setStatus(deadStatus, "");
    } catch (error) {
      setStatus(deadStatus, `Dead letters: ${error.message}`, "error");
    }
    setTimeout(refresh, 3000);
  }

  async function retry(which) {
    try {
      const result = await call("/node/dead-letters/retry", { json: which });
      setStatus(deadStatus, `Sent ${result.retried.length} result(s) back to the outbox.`, "done");
    } catch (error) {
      setStatus(deadStatus, `Not retried: ${error.message}`, "error");
    }
  }

  refresh();
}
