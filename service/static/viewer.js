// The study viewer: the film with the anomaly map (opacity slider), the model input beside its
// reconstruction, the legend, and every image of the study with its score.
import { call, element, setStatus, words } from "./api.js";

export function startViewer() {
  const dialog = document.getElementById("viewer");
  const status = document.getElementById("viewer-status");
  const map = document.getElementById("viewer-map");
  const opacity = document.getElementById("map-opacity");
  let opener = null;

  opacity.addEventListener("input", () => { map.style.opacity = opacity.value / 100; });
  opacity.setAttribute("aria-valuetext", `${opacity.value} %`);
  opacity.addEventListener("change", () => opacity.setAttribute("aria-valuetext", `${opacity.value} %`));
  document.getElementById("viewer-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => { if (opener) opener.focus(); });

  async function open(study) {
    opener = document.activeElement;
    document.getElementById("viewer-title").textContent =
      `Study ${study.accession_number || study.study_instance_uid || study.study_key}`;
    const date = study.study_date ? ` · study date ${study.study_date}` : "";
    document.getElementById("viewer-summary").textContent =
      `${study.label ? words(study.label) : words(study.status)} · highest score ` +
      `${study.score === null ? "–" : study.score.toFixed(3)}${date} · ${study.source === "node" ? "DICOM node" : "job"}`;
    // The legend is the one the single-film section shows for this artifact's map.
    document.getElementById("viewer-legend-text").textContent = document.getElementById("legend-text").textContent;
    document.getElementById("viewer-legend-max").textContent = document.getElementById("legend-max").textContent;
    for (const id of ["viewer-film", "viewer-map", "viewer-input", "viewer-reconstruction"]) {
      document.getElementById(id).removeAttribute("src");
    }
    document.getElementById("viewer-images").replaceChildren();
    if (!dialog.open) dialog.showModal();
    setStatus(status, "Loading the study…", "busy");
    try {
      const detail = await call(study.study_url);
      const first = detail.images.find((image) => image.view_url);
      listImages(detail.images, first);
      if (first) await show(first);
      else setStatus(status, "No image of this study could be scored.", "error");
    } catch (error) {
      setStatus(status, `Study: ${error.message}`, "error");
    }
  }

  function listImages(images, current) {
    document.getElementById("viewer-images").replaceChildren(...images.map((image, number) => {
      const name = `Image ${number + 1}`;
      const cell = image.view_url
        ? element("button", { type: "button", class: "open", "aria-pressed": String(image === current),
          onclick: (event) => {
            document.querySelectorAll("#viewer-images button").forEach((b) => b.setAttribute("aria-pressed", "false"));
            event.currentTarget.setAttribute("aria-pressed", "true");
            show(image);
          } }, name)
        : name;
      const notes = [image.reason, ...image.warnings].filter(Boolean).map(words).join(", ");
      return element("tr", { "data-image": image.image_key },
        element("td", {}, cell),
        element("td", { text: image.score === null ? "–" : image.score.toFixed(3) }),
        element("td", { text: image.label ? words(image.label) : "–" }),
        element("td", { text: words(image.status) }),
        element("td", { text: notes || "–" }));
    }));
  }

  async function show(image) {
    setStatus(status, "Drawing the map…", "busy");
    try {
      const view = await call(image.view_url);
      document.getElementById("viewer-film").src = "data:image/png;base64," + view.film_png_base64;
      map.src = "data:image/png;base64," + view.map_png_base64;
      map.style.opacity = opacity.value / 100;
      document.getElementById("viewer-input").src = "data:image/png;base64," + view.input_png_base64;
      document.getElementById("viewer-reconstruction").src = "data:image/png;base64," + view.reconstruction_png_base64;
      setStatus(status, `Score ${view.score.toFixed(3)} (threshold ${view.threshold.toFixed(3)})` +
        (view.warnings.length ? ` · ${view.warnings.map(words).join(", ")}` : ""), "done");
    } catch (error) {
      setStatus(status, `Image: ${error.message}`, "error");
    }
  }

  return { open };
}
