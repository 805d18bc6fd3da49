// flux-rs playground: submits to the queue API, follows the job's status stream, shows results.
// Plain script, no dependencies. The API key travels only in the Authorization header: the
// status stream is read with fetch() (EventSource cannot send headers), never with a key in a URL.
"use strict";

(function () {
  const KEY_STORAGE = "flux-rs.playground.api-key";
  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const keyInput = $("api-key");
  const modelSelect = $("model");
  const sizeSelect = $("image-size");
  const customSize = $("custom-size");
  const seedInput = $("seed");
  const seedFixed = $("seed-fixed");
  const seedRandom = $("seed-random");
  const stepsInput = $("steps");
  const generateButton = $("generate");
  const cancelButton = $("cancel");
  const jobBox = $("job");
  const progress = $("progress");
  const jobText = $("job-text");
  const status = $("status");
  const formError = $("form-error");
  const gallery = $("gallery");

  // The API's `param` → the input it names (anything else is shown above the buttons).
  const FIELDS = {
    prompt: "prompt",
    image_size: "image-size",
    "image_size.width": "width",
    "image_size.height": "height",
    num_inference_steps: "steps",
    guidance_scale: "guidance",
    seed: "seed",
    num_images: "num-images",
    output_format: "format",
  };
  // The steps each variant starts with (the API's defaults), used until the person edits steps.
  const DEFAULT_STEPS = { dev: "28", schnell: "4" };
  let stepsEdited = false;
  let current = null; // the running job: { id, queuePath }
  let busy = false; // from Generate until the job's end

  // ---- API key --------------------------------------------------------------------------
  function storedKey() {
    try {
      return window.localStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }
  function storeKey(value) {
    try {
      if (value) {
        window.localStorage.setItem(KEY_STORAGE, value);
      } else {
        window.localStorage.removeItem(KEY_STORAGE);
      }
    } catch (_) {
      // Storage may be off (private mode): the key then lasts as long as the page.
    }
  }
  function headers(extra) {
    const all = Object.assign({}, extra || {});
    const key = keyInput.value.trim();
    if (key) {
      all.Authorization = "Bearer " + key;
    }
    return all;
  }

  // ---- messages ---------------------------------------------------------------------------
  function announce(text) {
    status.textContent = text;
  }
  function clearErrors() {
    for (const error of form.querySelectorAll(".error")) {
      error.textContent = "";
      error.hidden = true;
    }
    for (const input of form.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
    }
  }
  function fieldError(inputId, message) {
    const input = $(inputId);
    const error = $(inputId + "-error");
    if (!input || !error) {
      return false;
    }
    if (inputId === "width" || inputId === "height") {
      customSize.hidden = false;
    }
    error.textContent = message;
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return true;
  }
  function bannerError(message) {
    formError.textContent = message;
    formError.hidden = false;
  }
  function retryAfter(response) {
    const seconds = parseInt(response.headers.get("Retry-After") || "", 10);
    return Number.isFinite(seconds) ? " Try again in " + seconds + " s." : " Try again shortly.";
  }

  // An error answer, in words, beside the field it names when it names one.
  async function showFailure(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    const error = (body && body.error) || {};
    const message = error.message || "";
    const requestId = body && body.request_id ? " (request id " + body.request_id + ")" : "";
    const code = response.status;
    if (code === 400 || code === 413 || code === 415 || code === 422) {
      const target = FIELDS[error.param];
      if (!(target && fieldError(target, message))) {
        bannerError(message || "The server refused the request (" + code + ").");
      }
      announce("The request was refused: " + message);
      return;
    }
    let text;
    if (code === 401) {
      text = "The server needs a valid API key: enter yours in the API key field.";
      fieldError("api-key", "This key was not accepted (401).");
    } else if (code === 404) {
      text = "Not found: " + (message || "the server has no such route or job") + "." + requestId;
    } else if (code === 429 && error.code === "overloaded") {
      text = "The server's queue is full; nothing was queued." + retryAfter(response);
    } else if (code === 429) {
      text = "Too many requests with this key for now." + retryAfter(response);
    } else if (code === 503) {
      text = error.code === "shutting_down"
        ? "The server is shutting down and takes no new work."
        : "The model is still loading." + retryAfter(response);
    } else if (code >= 500) {
      text = "The server failed to generate the image. Your request was fine; trying again may work." + requestId;
    } else {
      text = "Unexpected answer " + code + ": " + (message || response.statusText) + requestId;
    }
    bannerError(text);
    announce(text);
  }

  // ---- models -----------------------------------------------------------------------------
  async function loadModels() {
    let response;
    try {
      response = await fetch("/api/v1/models", { headers: headers() });
    } catch (_) {
      bannerError("Cannot reach the server to list its models.");
      return;
    }
    if (!response.ok) {
      if (response.status === 401) {
        $("model-hint").textContent = "Enter your API key to load this server's models.";
        $("model-hint").hidden = false;
      }
      return;
    }
    const list = (await response.json()).models || [];
    if (list.length === 0) {
      return;
    }
    const selected = modelSelect.value;
    modelSelect.replaceChildren();
    for (const model of list) {
      const option = document.createElement("option");
      option.value = model.variant;
      option.dataset.queuePath = model.queue_path || "/api/v1/queue/flux/" + model.variant;
      option.textContent = model.variant;
      option.dataset.id = model.id || "";
      modelSelect.append(option);
    }
    if ([...modelSelect.options].some((option) => option.value === selected)) {
      modelSelect.value = selected;
    }
    applyModelDefaults();
  }
  // The hint under the model names what serves it (a folder, the bundled model, a backend URL).
  function applyModelDefaults() {
    const option = modelSelect.selectedOptions[0];
    const id = option ? option.dataset.id : "";
    $("model-hint").textContent = id ? "Served by " + id + "." : "";
    $("model-hint").hidden = !id;
    if (!stepsEdited && DEFAULT_STEPS[modelSelect.value]) {
      stepsInput.value = DEFAULT_STEPS[modelSelect.value];
    }
  }

  // ---- the request body -------------------------------------------------------------------
  // Numbers go as numbers; anything else goes as typed, so the server's message names the rule.
  function number(text) {
    const trimmed = text.trim();
    return /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(trimmed) ? Number(trimmed) : trimmed;
  }
  function requestBody() {
    const body = {
      prompt: $("prompt").value,
      num_images: number($("num-images").value),
      num_inference_steps: number(stepsInput.value),
      guidance_scale: number($("guidance").value),
      output_format: $("format").value,
    };
    body.image_size = sizeSelect.value === "custom"
      ? { width: number($("width").value), height: number($("height").value) }
      : sizeSelect.value;
    if (seedFixed.checked) {
      body.seed = number(seedInput.value);
    }
    return body;
  }
  function idempotencyKey() {
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return "playground-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---- one job ----------------------------------------------------------------------------
  // While running, Generate is off; Cancel shows once the server has accepted the job.
  function setRunning(running) {
    generateButton.disabled = running;
    cancelButton.hidden = true;
    cancelButton.disabled = false;
    if (running) {
      jobBox.hidden = false;
    }
  }
  function showStatus(update) {
    if (update.status === "IN_QUEUE") {
      progress.removeAttribute("value");
      const ahead = update.queue_position || 0;
      jobText.textContent = ahead > 0
        ? "In the queue: " + ahead + (ahead === 1 ? " job" : " jobs") + " ahead."
        : "In the queue: next to run.";
      progress.setAttribute("aria-valuetext", jobText.textContent);
      announce(jobText.textContent);
    } else if (update.status === "IN_PROGRESS" && update.progress) {
      const step = update.progress.step;
      const total = update.progress.total_steps;
      progress.max = total;
      progress.value = step;
      jobText.textContent = "Step " + step + " of " + total + ".";
      progress.setAttribute("aria-valuetext", jobText.textContent);
      // A screen reader hears the start and every quarter, not every step.
      const quarter = Math.max(1, Math.round(total / 4));
      if (step === 1 || step === total || step % quarter === 0) {
        announce("Generating: step " + step + " of " + total + ".");
      }
    } else if (update.status === "IN_PROGRESS") {
      jobText.textContent = "Starting.";
    }
  }

  // Reads `text/event-stream` from a fetch() body: each event's `data:` lines, as JSON.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        return;
      }
      // CRLF line ends become LF; a lone CR (which the server never sends) is left alone.
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) {
          yield JSON.parse(data);
        }
      }
    }
  }

  // The job's terminal status: from the stream, or by polling if the stream breaks off.
  async function follow(job) {
    const path = job.queuePath + "/requests/" + encodeURIComponent(job.id) + "/status";
    try {
      const response = await fetch(path + "/stream", { headers: headers({ Accept: "text/event-stream" }) });
      if (response.ok) {
        for await (const update of events(response)) {
          showStatus(update);
          if (update.status === "COMPLETED") {
            return update;
          }
        }
      }
    } catch (_) {
      // Fall through to polling: a proxy may cut long streams.
    }
    for (;;) {
      const response = await fetch(path, { headers: headers() });
      if (!response.ok) {
        await showFailure(response);
        return null;
      }
      const update = await response.json();
      showStatus(update);
      if (update.status === "COMPLETED") {
        return update;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async function generate(event) {
    event.preventDefault();
    if (busy) {
      return;
    }
    busy = true;
    try {
      await run();
    } catch (_) {
      // A dropped connection while following the job: say so, and free the form.
      finish("");
      bannerError("The connection to the server was lost; the job may still finish on the server.");
    } finally {
      busy = false;
    }
  }

  async function run() {
    clearErrors();
    storeKey(keyInput.value.trim());
    const option = modelSelect.selectedOptions[0];
    const queuePath = (option && option.dataset.queuePath) || "/api/v1/queue/flux/dev";
    const started = performance.now();
    setRunning(true);
    progress.removeAttribute("value");
    jobText.textContent = "Submitting.";
    $("job-id").textContent = "";
    let response;
    try {
      response = await fetch(queuePath, {
        method: "POST",
        headers: headers({ "Content-Type": "application/json", "Idempotency-Key": idempotencyKey() }),
        body: JSON.stringify(requestBody()),
      });
    } catch (_) {
      finish("Cannot reach the server.");
      bannerError("Cannot reach the server: check that it is running and the address is right.");
      return;
    }
    if (response.status !== 202) {
      finish("");
      await showFailure(response);
      return;
    }
    const submitted = await response.json();
    current = { id: submitted.request_id, queuePath: queuePath };
    jobBox.dataset.requestId = submitted.request_id;
    $("job-id").textContent = "Request id " + submitted.request_id;
    cancelButton.hidden = false;
    showStatus(submitted);
    const final = await follow(current);
    if (!final) {
      finish("");
      return;
    }
    if (final.outcome === "succeeded") {
      const result = await fetch(queuePath + "/requests/" + encodeURIComponent(current.id), { headers: headers() });
      if (!result.ok) {
        finish("");
        await showFailure(result);
        return;
      }
      const body = await result.json();
      addResults(body, (performance.now() - started) / 1000);
      finish("Done: " + body.images.length + (body.images.length === 1 ? " image" : " images") + ", seed " + body.seed + ".");
    } else if (final.outcome === "cancelled") {
      finish("Cancelled. Nothing more is generated for it.");
    } else {
      const error = final.error || {};
      finish("");
      bannerError(error.code === "exceeds_memory_limit"
        ? error.message
        : "The server failed to generate the image: " + (error.message || "no detail") + ".");
      announce(formError.textContent);
    }
  }

  function finish(text) {
    // Focus on the Cancel button or the job box (or lost with them) comes back to Generate;
    // focus anywhere else (someone typing the next prompt) stays where it is.
    const active = document.activeElement;
    const hadFocus = !active || active === document.body || active === cancelButton || jobBox.contains(active);
    current = null;
    setRunning(false);
    jobText.textContent = text;
    if (!text) {
      jobBox.hidden = true;
    } else {
      progress.setAttribute("aria-valuetext", text);
      announce(text);
    }
    // The Cancel button disappears: keep the keyboard focus on the form, not on the page body.
    if (hadFocus) {
      generateButton.focus();
    }
  }

  async function cancel() {
    if (!current) {
      return;
    }
    // Focus moves to the job's status before its button is disabled, so it is not lost.
    jobBox.focus();
    cancelButton.disabled = true;
    jobText.textContent = "Cancelling.";
    announce("Cancelling.");
    const path = current.queuePath + "/requests/" + encodeURIComponent(current.id) + "/cancel";
    try {
      const response = await fetch(path, { method: "PUT", headers: headers() });
      if (!response.ok && response.status !== 400) {
        await showFailure(response);
        cancelButton.disabled = false;
      }
    } catch (_) {
      bannerError("Cannot reach the server to cancel.");
      cancelButton.disabled = false;
    }
  }

  // ---- gallery ----------------------------------------------------------------------------
  function addResults(body, totalSeconds) {
    $("gallery-empty").hidden = true;
    const prompt = $("prompt").value.trim();
    // Prepended in reverse so that the batch keeps its order and stays above older results.
    body.images.slice().reverse().forEach((image, reversedIndex) => {
      const index = body.images.length - 1 - reversedIndex;
      const item = document.createElement("li");
      item.className = "result";
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = image.url;
      img.width = image.width;
      img.height = image.height;
      img.alt = "Generated for “" + prompt + "”, seed " + body.seed + (body.images.length > 1 ? ", image " + (index + 1) : "");
      const meta = document.createElement("figcaption");
      meta.className = "meta";
      const lines = [
        "Seed " + body.seed + (body.images.length > 1 ? " · image " + (index + 1) + " of " + body.images.length : ""),
        image.width + " × " + image.height + " · " + (image.content_type || ""),
        "Inference " + body.timings.inference.toFixed(2) + " s · total " + totalSeconds.toFixed(2) + " s",
      ];
      for (const line of lines) {
        const p = document.createElement("p");
        p.textContent = line;
        meta.append(p);
      }
      const actions = document.createElement("div");
      actions.className = "actions";
      const download = document.createElement("a");
      download.href = image.url;
      download.download = "flux-" + body.seed + "-" + (index + 1) + (image.content_type === "image/png" ? ".png" : ".jpg");
      download.textContent = "Download";
      download.setAttribute("aria-label", "Download image " + (index + 1) + ", seed " + body.seed);
      const reuse = document.createElement("button");
      reuse.type = "button";
      reuse.className = "secondary use-seed";
      reuse.textContent = "Use this seed";
      reuse.setAttribute("aria-label", "Use seed " + body.seed);
      reuse.addEventListener("click", () => {
        seedFixed.checked = true;
        seedInput.disabled = false;
        seedInput.value = String(body.seed);
        seedInput.focus();
        announce("Seed " + body.seed + " set; press Generate to make it again.");
      });
      actions.append(download, reuse);
      meta.append(actions);
      figure.append(img, meta);
      item.append(figure);
      gallery.prepend(item);
    });
  }

  // ---- wiring -----------------------------------------------------------------------------
  keyInput.value = storedKey();
  keyInput.addEventListener("change", () => {
    storeKey(keyInput.value.trim());
    loadModels();
  });
  $("forget-key").addEventListener("click", () => {
    keyInput.value = "";
    storeKey("");
    keyInput.focus();
    announce("API key forgotten.");
  });
  sizeSelect.addEventListener("change", () => {
    customSize.hidden = sizeSelect.value !== "custom";
  });
  for (const radio of [seedFixed, seedRandom]) {
    radio.addEventListener("change", () => {
      seedInput.disabled = !seedFixed.checked;
      if (seedFixed.checked) {
        seedInput.focus();
      }
    });
  }
  stepsInput.addEventListener("input", () => {
    stepsEdited = true;
  });
  modelSelect.addEventListener("change", applyModelDefaults);
  form.addEventListener("submit", generate);
  cancelButton.addEventListener("click", cancel);
  // Ctrl+Enter (or Cmd+Enter) in the prompt generates, as in most prompt boxes.
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      form.requestSubmit();
    }
  });
  loadModels();
})();
