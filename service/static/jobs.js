// Jobs: start one on a folder of the import root, follow its progress, cancel, download results.
import { call, duration, element, setStatus, words } from "./api.js";

const ACTIVE = new Set(["queued", "running"]);

export function startJobs({ onJobs, onShow }) {
  const form = document.getElementById("job-form");
  const status = document.getElementById("job-status");
  const body = document.getElementById("jobs-body");
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    let jobs = [];
    try {
      jobs = (await call("/jobs?limit=20")).jobs;
      render(jobs);
    } catch (error) {
      if (error.reason === "no_broker") {
        setStatus(status, "Batch jobs need a broker (SQUID_BROKER_URL) on this server.", "error");
        form.querySelector("button").disabled = true;
        return;
      }
      setStatus(status, `Jobs: ${error.message}`, "error");
    }
    onJobs(jobs);
    timer = setTimeout(refresh, jobs.some((job) => ACTIVE.has(job.state)) ? 1000 : 10000);
  }

  let shown = "";

  function render(jobs) {
    document.getElementById("jobs-empty").hidden = jobs.length > 0;
    const signature = JSON.stringify(jobs.map(({ elapsed_s, ...job }) => job));
    if (signature === shown) return;  // an unchanged list keeps its rows, and the keyboard focus
    shown = signature;
    body.replaceChildren(...jobs.map(row));
  }

  function row(job) {
    const left = job.files_per_s && job.total ? (job.total - job.done) / job.files_per_s : NaN;
    const total = Math.max(job.total, 1);
    const bar = element("div", {
      class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": String(job.total),
      "aria-valuenow": String(job.done), "aria-label": `Progress of ${job.label}`,
      "aria-valuetext": `${job.done} of ${job.total} files`,
    });
    for (const part of ["scored", "skipped", "failed"]) {
      bar.append(element("span", { class: `part ${part}`, style: `width: ${(100 * job[part]) / total}%` }));
    }
    const counts = element("span", {
      class: "counts",
      text: `${job.scored} scored · ${job.skipped} skipped · ${job.out_of_domain ?? 0} out of domain · ` +
        `${job.failed} failed of ${job.total || "?"}`,
    });
    const actions = element("td", { class: "actions" });
    if (ACTIVE.has(job.state)) {
      actions.append(element("button", { type: "button", class: "button secondary", text: "Cancel",
        "aria-label": `Cancel the job on ${job.label}`, onclick: () => cancel(job) }));
    }
    if (job.results) {
      actions.append(element("a", { class: "link", href: job.results.instance_csv, download: "", text: "CSV" }));
      if (job.results.dicom_zip) {
        actions.append(element("a", { class: "link", href: job.results.dicom_zip, download: "", text: "DICOM" }));
      }
    }
    actions.append(element("button", { type: "button", class: "button secondary", text: "Worklist",
      "aria-label": `Show the studies of ${job.label} in the worklist`, onclick: () => onShow(job.id) }));
    const state = job.error ? `${job.state}: ${words(job.error.reason)}` : job.state;
    return element("tr", { "data-job": job.id, "data-state": job.state },
      element("td", { text: job.label }),
      element("td", { class: `state ${job.state}`, text: state }),
      element("td", {}, bar, counts),
      element("td", { text: job.files_per_s ? `${job.files_per_s.toFixed(1)} files/s` : "–" }),
      element("td", { text: ACTIVE.has(job.state) ? duration(left) : "–" }),
      actions);
  }

  async function cancel(job) {
    try {
      await call(`/jobs/${job.id}`, { method: "DELETE" });
      setStatus(status, `Cancelled the job on ${job.label}.`, "done");
    } catch (error) {
      setStatus(status, `Not cancelled: ${error.message}`, "error");
    }
    refresh();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const path = document.getElementById("job-path").value.trim();
    const dicom = document.getElementById("job-dicom").checked;
    setStatus(status, `Starting a job on ${path}…`, "busy");
    try {
      const job = await call("/jobs", { json: { path, dicom_out: dicom } });
      setStatus(status, `Started a job on ${job.label}.`, "done");
      onShow(job.id);
    } catch (error) {
      setStatus(status, `Not started: ${error.message}`, "error");
    }
    refresh();
  });

  refresh();
  return { refresh };
}
