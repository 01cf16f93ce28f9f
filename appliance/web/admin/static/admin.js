// The admin page's little JavaScript: confirmations, send progress, uploads.
"use strict";

function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]').content;
}

function confirmForms() {
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  });
}

// Poll the send's progress until nothing is left pending.
function watchProgress() {
  var box = document.getElementById("progress");
  if (!box) { return; }
  var fill = box.querySelector(".fill");
  var text = document.getElementById("progress-text");
  var total = parseInt(box.dataset.total, 10) || 1;
  function poll() {
    fetch(box.dataset.url, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (p) {
      var done = p.sent + p.refused;
      fill.style.width = Math.min(100, 100 * done / total) + "%";
      if (p.pending === 0 && (done > 0 || p.failed > 0)) {
        var ok = p.failed === 0 && p.sent > 0;
        fill.style.width = "100%";
        fill.classList.add(ok ? "done" : "failed");
        text.textContent = ok ? "Done: " + p.sent + " images sent."
          : "Finished with errors: " + p.sent + " sent, " + p.refused + " refused, " + p.failed + " failed (see the queue).";
        box.dataset.state = ok ? "done" : "failed";
        return;
      }
      text.textContent = "Sending: " + p.sent + " of " + total + " sent, " + p.pending + " waiting"
        + (p.refused ? ", " + p.refused + " refused (retrying)" : "") + "…";
      window.setTimeout(poll, 1000);
    }).catch(function (e) {
      text.textContent = "Progress unavailable (" + e.message + "), retrying…";
      window.setTimeout(poll, 3000);
    });
  }
  poll();
}

function uploadOne(file, row) {
  return new Promise(function (resolve) {
    var bar = row.querySelector("progress");
    var result = row.querySelector(".result");
    var xhr = new XMLHttpRequest();
    xhr.open("POST", "/instances");
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.setRequestHeader("Content-Type", file.name.toLowerCase().endsWith(".zip") ? "application/zip" : "application/dicom");
    xhr.upload.onprogress = function (e) { if (e.lengthComputable) { bar.value = e.loaded / e.total; } };
    xhr.onload = function () {
      bar.value = 1;
      var message = xhr.status + " ";
      try {
        var body = JSON.parse(xhr.responseText);
        var items = Array.isArray(body) ? body : [body];
        message += items.map(function (i) { return (i.Status || "") + (i.Message ? ": " + i.Message : ""); }).join(", ");
      } catch (err) { message += xhr.statusText; }
      result.textContent = message;
      row.className = xhr.status < 300 ? "ok" : "bad";
      resolve();
    };
    xhr.onerror = function () { result.textContent = "network error"; row.className = "bad"; resolve(); };
    xhr.send(file);
  });
}

function uploads() {
  var start = document.getElementById("upload-start");
  if (!start) { return; }
  start.addEventListener("click", function () {
    var table = document.getElementById("upload-results");
    var files = Array.prototype.slice.call(document.getElementById("files").files);
    var chain = Promise.resolve();
    files.forEach(function (file) {
      var row = table.insertRow();
      row.insertCell().textContent = file.name;
      row.insertCell().appendChild(document.createElement("progress"));
      row.insertCell().className = "result";
      chain = chain.then(function () { return uploadOne(file, row); });
    });
    chain.then(function () { table.dataset.done = "1"; });
  });
}

document.addEventListener("DOMContentLoaded", function () {
  confirmForms();
  watchProgress();
  uploads();
});
