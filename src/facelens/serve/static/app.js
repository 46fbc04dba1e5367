// facelens web page: upload photos to /v1/analyze and show the estimates. No build step, no external code.
"use strict";

(() => {
  const drop = document.getElementById("drop");
  const input = document.getElementById("file");
  const results = document.getElementById("results");
  const status = document.getElementById("status");
  const photoTpl = document.getElementById("photo-template");
  const faceTpl = document.getElementById("face-template");

  // Upload at most two photos at a time: the server has few cores and queues the rest anyway.
  const PARALLEL = 2;
  let pending = 0;

  const pct = (p) => `${(100 * p).toFixed(0)}%`;
  const png = (b64) => (b64 ? `data:image/png;base64,${b64}` : "");

  function setStatus() {
    status.textContent = pending > 0 ? `Analysing ${pending} photo${pending === 1 ? "" : "s"}…` : "";
  }

  function errorText(status, body) {
    const err = body && body.error;
    const msg = err && err.message ? err.message : `the server answered ${status}`;
    const hints = {
      413: "The file is too large.",
      415: "This file is not an image we can read.",
      422: "The image could not be used.",
      400: "Nothing was uploaded.",
      503: "The models are not loaded yet; try again in a moment.",
    };
    return `${hints[status] || "The photo could not be analysed."} (${msg})`;
  }

  function renderFace(face, index) {
    const card = faceTpl.content.firstElementChild.cloneNode(true);
    card.querySelector(".face-title").textContent = `Face #${index}`;
    card.querySelector(".face-number").textContent = String(index);
    const crops = face.crops || {};
    const pairs = [
      [".crop-face", crops.face],
      [".crop-right", crops.right_eye],
      [".crop-left", crops.left_eye],
      [".crop-both", crops.both_eyes],
    ];
    for (const [sel, b64] of pairs) {
      const img = card.querySelector(sel);
      if (b64) img.src = png(b64);
      else img.closest("figure").remove();
    }
    if (!card.querySelector(".crops figure")) card.querySelector(".crops").remove();

    const age = face.age;
    if (age) {
      card.querySelector(".age-value").textContent = `${Math.round(age.value)} years`;
      card.querySelector(".age-interval").textContent =
        `${Math.round(100 * age.interval)}% interval: ${Math.round(age.low)}–${Math.round(age.high)}`;
    } else {
      card.querySelector(".age").remove();
    }

    const sex = face.sex;
    if (sex) {
      card.querySelector(".p-female").textContent = `P(female) ${pct(sex.p_female)}`;
      card.querySelector(".p-male").textContent = `P(male) ${pct(sex.p_male)}`;
      card.querySelector(".bar-female").style.width = `${100 * sex.p_female}%`;
      card.querySelector(".bar-male").style.width = `${100 * sex.p_male}%`;
      card.querySelector(".bar").setAttribute(
        "aria-label", `probability female ${pct(sex.p_female)}, male ${pct(sex.p_male)}`);
      const perEye = (sex.eyes || []).filter((e) => e.side !== "both");
      const eyes = perEye.map((e) => `${e.side} eye ${pct(e.p_female)}`).join(", ");
      card.querySelector(".eyes-detail").textContent =
        (sex.caution ? `Caution: ${sex.caution}. ` : "") + (eyes ? `P(female) per eye: ${eyes}` : "");
      const disagree = card.querySelector(".eyes-disagree");
      if (sex.eyes_disagree) {
        disagree.textContent = "The two eyes disagree: one says female, the other male, each with confidence. " +
          "The combined estimate is unreliable for this face (an eye may be hidden, shadowed or turned away).";
      } else {
        disagree.remove();
      }
    } else {
      card.querySelector(".sex").remove();
    }
    return card;
  }

  function renderResult(article, data) {
    const state = article.querySelector(".photo-state");
    const img = article.querySelector(".annotated img");
    if (data.annotated_jpeg) img.src = `data:image/jpeg;base64,${data.annotated_jpeg}`;
    const faces = data.faces || [];
    if (faces.length === 0) {
      state.textContent = "No face found in this photo. Try a sharper photo where the face is larger and seen from the front.";
      state.className = "photo-state warn";
      return;
    }
    state.textContent = `${faces.length} face${faces.length === 1 ? "" : "s"} found (${Math.round(data.timings_ms.total)} ms).`;
    state.className = "photo-state ok";
    const list = article.querySelector(".faces");
    // Numbers match the badges on the annotated photo: faces come in reading order (rows, then left to right).
    faces.forEach((f, i) => list.appendChild(renderFace(f, i + 1)));
  }

  // Bring the first answer of an upload into view once, so results below the fold are not missed.
  function revealOnce(job) {
    if (job.batch.revealed) return;
    job.batch.revealed = true;
    job.article.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  async function analyse(file, article) {
    const state = article.querySelector(".photo-state");
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const res = await fetch("/v1/analyze?annotate=true&crops=true", { method: "POST", body: form });
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      if (!res.ok || !body) {
        state.textContent = errorText(res.status, body);
        state.className = "photo-state error";
        article.querySelector(".photo-body").remove();
        return;
      }
      renderResult(article, body);
    } catch (e) {
      state.textContent = `Could not reach the server (${e.message}).`;
      state.className = "photo-state error";
      article.querySelector(".photo-body").remove();
    }
  }

  async function handleFiles(fileList) {
    const files = Array.from(fileList || []);
    if (files.length === 0) return;
    const batch = { revealed: false };
    const jobs = files.map((file) => {
      const article = photoTpl.content.firstElementChild.cloneNode(true);
      article.querySelector(".photo-name").textContent = file.name || "photo";
      article.querySelector(".photo-state").textContent = "Waiting…";
      return { file, article, batch };
    });
    // Shown in the order chosen, above earlier uploads.
    for (const job of jobs.slice().reverse()) results.prepend(job.article);
    pending += jobs.length;
    setStatus();
    const queue = jobs.slice();
    const worker = async () => {
      while (queue.length) {
        const job = queue.shift();
        job.article.querySelector(".photo-state").textContent = "Analysing…";
        await analyse(job.file, job.article);
        revealOnce(job);
        pending -= 1;
        setStatus();
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, jobs.length) }, worker));
  }

  input.addEventListener("change", () => {
    handleFiles(input.files);
    input.value = "";
  });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => handleFiles(e.dataTransfer && e.dataTransfer.files));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  fetch("/healthz").then((r) => r.json()).then((h) => {
    if (h.max_upload_bytes) {
      document.getElementById("limit").textContent = `, up to ${(h.max_upload_bytes / 1048576).toFixed(0)} MB each`;
    }
    if (!h.models_loaded) {
      status.textContent = `The models are not loaded${h.error ? ` (${h.error})` : ""}; analysis is unavailable.`;
    }
  }).catch(() => {});

  // Dropping a photo outside the drop zone should not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
})();
