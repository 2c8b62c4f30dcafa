"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop");
  const fileInput = $("file");
  const status = $("status");
  // A server with an API key protects this page with HTTP Basic: the browser asked for the key when
  // the page loaded and sends it with these same-origin requests, so no key handling is needed here.
  // URLs are built on the origin: fetch() refuses URLs that inherit user:password@ from the address bar.
  const api = (path) => new URL(path, window.location.origin);

  // The domain gate's codes in words (the API sends the codes; see README "The domain gate").
  const DOMAIN_REASONS = {
    modality: "the DICOM modality is not a radiograph (CT, MR, ultrasound, ...)",
    body_part: "the DICOM header names a body part other than the chest",
    view: "the DICOM header says the view is lateral or oblique, not frontal",
    color_image: "it is a colour image, not a radiograph",
    blank_image: "the image is blank",
    image_too_small: "the image is too small to judge",
    not_a_chest_radiograph: "it does not look like a frontal chest radiograph",
  };
  let population = "";

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "status" + (kind ? " " + kind : "");
  }

  async function loadModel() {
    try {
      const response = await fetch(api("/model"));
      if (!response.ok) {
        $("model-line").textContent = response.status === 401
          ? "Model: this server needs its API key (reload the page to sign in)"
          : "Model: not ready yet";
        return;
      }
      const model = await response.json();
      $("model-line").textContent =
        `Model: ${model.model_name} ${model.model_version} · threshold ${model.serving.threshold.toFixed(3)}`;
      describeMap(model.anomaly_map || {});
      const ages = (model.population || {}).age_years;
      if (ages) population = `patients aged ${ages.min} to ${ages.max} years`;
    } catch (error) {
      $("model-line").textContent = "Model: server unreachable";
    }
  }

  // The legend follows the artifact: a fixed scale for the score-attribution map, or the
  // older residual map that is scaled per image (its colours do not compare across images).
  function describeMap(map) {
    if (map.display_max) {
      const percent = Math.round((1 - map.display_quantile) * 1000) / 10;
      $("legend-max").textContent = `full colour: top ${percent} % of normals`;
      $("legend-text").textContent =
        "Colour shows where the discriminator found this image less normal than the training " +
        "normals on average; the map adds up to the raw score's deviation from their mean. " +
        "The scale is fixed, so a colour means the same on every image. " +
        "Evidence for the score, not an outline of a lesion.";
    } else {
      $("legend-max").textContent = "this image's maximum";
      $("legend-text").textContent =
        "Older model: the map is the smoothed reconstruction residual, scaled per image; " +
        "it is not what the score used.";
    }
  }

  function row(name, value) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.textContent = name;
    td.textContent = value === null || value === undefined || value === "" ? "–" : String(value);
    tr.append(th, td);
    return tr;
  }

  function show(result) {
    const score = result.score;
    $("score").textContent = score.toFixed(3);
    $("label").textContent = result.is_anomalous ? "Anomalous" : "Normal";
    $("label").className = "label " + (result.is_anomalous ? "anomalous" : "normal");
    $("result").dataset.label = result.is_anomalous ? "anomalous" : "normal";
    $("threshold").textContent = result.threshold.toFixed(3);
    $("raw-score").textContent = result.raw_score.toPrecision(4);
    $("gauge-fill").style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    $("gauge-fill").className = "gauge-fill " + (result.is_anomalous ? "anomalous" : "normal");
    $("gauge-threshold").style.left = `${Math.max(0, Math.min(1, result.threshold)) * 100}%`;
    const outside = result.warnings.includes("outside_training_population");
    $("population-warning").hidden = !outside;
    $("population-warning").textContent = outside
      ? "The patient is outside the model's training population" +
        (population ? ` (${population})` : "") + ": the score is less reliable."
      : "";
    $("input-image").src = "data:image/png;base64," + result.preview_png_base64;
    $("overlay-image").src = "data:image/png;base64," + result.heatmap_png_base64;

    const info = result.input;
    const table = $("input-table");
    table.replaceChildren(
      row("Format", info.format),
      row("Size", `${info.columns} × ${info.rows}`),
      row("Photometric", info.photometric_interpretation),
      row("Bits stored", info.bits_stored),
      row("View", info.view_position),
      row("Modality", info.modality),
      row("Transfer syntax", info.transfer_syntax_name || info.transfer_syntax),
      row("Model", `${result.model.name} ${result.model.version}`),
    );
    const warnings = $("warnings");
    warnings.replaceChildren(...result.warnings.map((code) => {
      const li = document.createElement("li");
      li.textContent = code.replaceAll("_", " ");
      return li;
    }));
    const t = result.timing_ms;
    $("timing").textContent =
      `decode ${t.decode.toFixed(1)} ms · preprocess ${t.preprocess.toFixed(1)} ms · ` +
      `inference ${t.inference.toFixed(1)} ms`;
    $("result").hidden = false;
  }

  function showRefusal(reasons) {
    $("refusal-reasons").replaceChildren(...reasons.map((code) => {
      const li = document.createElement("li");
      li.dataset.reason = code;
      li.textContent = DOMAIN_REASONS[code] || code.replaceAll("_", " ");
      return li;
    }));
    $("refusal").hidden = false;
  }

  async function score(file) {
    if (!file) return;
    setStatus(`Scoring ${file.name}…`, "busy");
    $("result").hidden = true;
    $("refusal").hidden = true;
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const response = await fetch(api("/score?heatmap=true&preview=true"), {
        method: "POST",
        body: form,
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        const error = body && body.error ? body.error : { reason: `http_${response.status}`, detail: "" };
        if (error.reason === "out_of_domain") {
          showRefusal(error.reasons || []);
          setStatus(`Not assessed: ${file.name} is outside the model's domain.`, "error");
          return;
        }
        setStatus(`Not scored: ${error.reason.replaceAll("_", " ")}. ${error.detail}`, "error");
        return;
      }
      show(body);
      setStatus(`Scored ${file.name}.`, "done");
    } catch (error) {
      setStatus(`Request failed: ${error}`, "error");
    }
  }

  fileInput.addEventListener("change", () => score(fileInput.files[0]));
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (event) => score(event.dataTransfer.files[0]));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") fileInput.click();
  });

  loadModel();
})();
