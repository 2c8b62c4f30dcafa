// The worklist: a job's studies and the node's, ranked on the server, filtered, paged, opened.
import { call, element, setStatus, url, words } from "./api.js";

const PAGE = 25;

export function startWorklist({ openStudy }) {
  const body = document.getElementById("worklist-body");
  const status = document.getElementById("worklist-status");
  const jobSelect = document.getElementById("worklist-job");
  const state = { sort: "score", order: "desc", offset: 0, total: 0, job: "", patient: false };
  let knownJobs = "";
  let timer = null;

  async function init() {
    try {
      const facets = await call("/worklist/facets");
      state.patient = facets.patient_identifiers;
      document.querySelectorAll(".patient").forEach((cell) => { cell.hidden = !state.patient; });
      boxes("label-filter", "label", facets.labels);
      boxes("status-filter", "status", facets.statuses);
    } catch (error) {
      setStatus(status, `Worklist: ${error.message}`, "error");
    }
    for (const id of ["worklist-node", "date-from", "date-to", "worklist-job"]) {
      document.getElementById(id).addEventListener("change", () => { state.offset = 0; load(); });
    }
    document.querySelectorAll("#worklist-head th[data-sort] button").forEach((button) => {
      button.addEventListener("click", () => sortBy(button.parentElement.dataset.sort));
    });
    document.getElementById("page-prev").addEventListener("click", () => page(-1));
    document.getElementById("page-next").addEventListener("click", () => page(1));
    load();
  }

  function boxes(id, name, values) {
    const set = document.getElementById(id);
    for (const value of values) {
      const input = element("input", { type: "checkbox", name, value, id: `${name}-${value}` });
      input.addEventListener("change", () => { state.offset = 0; load(); });
      set.append(element("label", { class: "check", for: `${name}-${value}` }, input, ` ${words(value)}`));
    }
  }

  function sortBy(key) {
    state.order = state.sort === key && state.order === "desc" ? "asc" : "desc";
    state.sort = key;
    state.offset = 0;
    document.querySelectorAll("#worklist-head th[data-sort]").forEach((th) => {
      if (th.dataset.sort === key) th.setAttribute("aria-sort", state.order === "desc" ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    });
    load();
  }

  function page(step) {
    const next = state.offset + step * PAGE;
    if (next < 0 || next >= state.total) return;
    state.offset = next;
    load();
  }

  function query() {
    const params = new URLSearchParams({ sort: state.sort, order: state.order, offset: state.offset, limit: PAGE });
    if (jobSelect.value) params.set("job", jobSelect.value);
    params.set("node", document.getElementById("worklist-node").checked ? "true" : "false");
    document.querySelectorAll("#label-filter input:checked").forEach((box) => params.append("label", box.value));
    document.querySelectorAll("#status-filter input:checked").forEach((box) => params.append("status", box.value));
    for (const [id, name] of [["date-from", "date_from"], ["date-to", "date_to"]]) {
      const value = document.getElementById(id).value;
      if (value) params.set(name, value);
    }
    return params;
  }

  async function load() {
    clearTimeout(timer);
    try {
      const result = await call(`/worklist?${query()}`);
      state.total = result.total;
      render(result.studies);
      const last = Math.min(result.offset + result.studies.length, result.total);
      document.getElementById("page-info").textContent =
        result.total ? `${result.offset + 1}–${last} of ${result.total} studies` : "No study";
      document.getElementById("page-prev").disabled = result.offset === 0;
      document.getElementById("page-next").disabled = last >= result.total;
      setStatus(status, "");
    } catch (error) {
      setStatus(status, `Worklist: ${error.message}`, "error");
    }
    timer = setTimeout(load, 5000);  // the node and running jobs add studies
  }

  let shown = "";

  function render(studies) {
    // Polling must not rebuild an unchanged table: it would take the keyboard focus away.
    const signature = JSON.stringify(studies);
    if (signature === shown) return;
    shown = signature;
    const focused = document.activeElement && body.contains(document.activeElement)
      ? document.activeElement.closest("tr").dataset.study : null;
    body.replaceChildren(...studies.map((study) => {
      const thumb = element("img", { src: url(study.thumbnail_url), alt: "", class: "thumb", loading: "lazy",
        width: "48", height: "48" });
      thumb.addEventListener("error", () => thumb.classList.add("missing"));
      const open = element("button", { type: "button", class: "open",
        "aria-label": `Open study ${study.accession_number || study.study_instance_uid || study.study_key}`,
        onclick: () => openStudy(study) }, study.score === null ? "–" : study.score.toFixed(3));
      const notes = [...study.reasons, ...study.warnings].map(words).join(", ");
      const patient = [study.patient_name, study.patient_id].filter(Boolean).join(" · ");
      const tr = element("tr", { class: study.flagged ? "flagged" : "", "data-study": study.study_key,
        "data-score": study.score === null ? "" : String(study.score) },
        element("td", {}, thumb),
        element("td", { class: "score-cell" }, open),
        element("td", {}, study.label
          ? element("span", { class: `label ${study.label}`, text: words(study.label) }) : "–"),
        element("td", { text: words(study.status) }),
        element("td", { class: "notes", text: notes || "–" }),
        element("td", { text: study.accession_number || "–" }),
        element("td", { text: study.study_date || "–" }),
        state.patient ? element("td", { text: patient || "–" }) : null,
        element("td", { text: study.source === "node" ? "DICOM node" : "job" }),
        element("td", { text: `${study.scored}/${study.images}` }));
      tr.addEventListener("click", (event) => { if (event.target.tagName !== "BUTTON") openStudy(study); });
      return tr;
    }));
    const again = focused && [...body.rows].find((row) => row.dataset.study === focused);
    if (again) again.querySelector("button.open").focus();
  }

  function setJobs(jobs) {
    const signature = jobs.map((job) => job.id).join();
    if (signature === knownJobs) return;
    const chosen = jobSelect.value || state.job;
    knownJobs = signature;
    jobSelect.replaceChildren(element("option", { value: "", text: "(none)" }),
      ...jobs.map((job) => element("option", { value: job.id, text: `${job.label} · ${job.created_at || ""}` })));
    jobSelect.value = jobs.some((job) => job.id === chosen) ? chosen : (jobs[0] ? jobs[0].id : "");
    if (jobSelect.value !== chosen) load();
  }

  function showJob(id) {
    state.job = id;
    if ([...jobSelect.options].some((option) => option.value === id)) jobSelect.value = id;
    state.offset = 0;
    load();
    document.getElementById("worklist-title").scrollIntoView();
  }

  init();
  return { setJobs, showJob, reload: load };
}
