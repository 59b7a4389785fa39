// kala dashboard: the little JavaScript it has. Everything works without it; it only
// hides the fields of the other job type, previews a schedule while it is typed and
// refreshes a job's page while one of its runs is in flight.
(function () {
  "use strict";

  function showType(form) {
    var select = form.querySelector("[data-type-switch]");
    if (!select) return;
    var shown = {"1": "remote", "2": "task"}[select.value] || "local";
    form.querySelectorAll("[data-section]").forEach(function (section) {
      var mine = section.getAttribute("data-section") === shown;
      section.hidden = !mine;
    });
  }

  function renderPreview(box, data) {
    box.textContent = "";
    var p = document.createElement("p");
    if (!data.ok) {
      p.className = "error-text";
      p.textContent = data.error || "cannot read the schedule";
      box.appendChild(p);
      return;
    }
    p.className = "words";
    p.textContent = data.words;
    box.appendChild(p);
    if (data.occurrences && data.occurrences.length) {
      var list = document.createElement("ol");
      data.occurrences.forEach(function (t) {
        var li = document.createElement("li");
        li.textContent = t;
        list.appendChild(li);
      });
      box.appendChild(list);
    }
    if (data.note) {
      var note = document.createElement("p");
      note.className = "warn";
      note.textContent = data.note;
      box.appendChild(note);
    }
  }

  function wirePreview(form) {
    var url = form.getAttribute("data-preview-url");
    var box = document.getElementById("preview");
    var schedule = form.querySelector("[name=schedule]");
    var cron = form.querySelector("[name=cron]");
    var zone = form.querySelector("[name=timezone]");
    if (!url || !box || !schedule) return;
    var timer = null, seq = 0;
    function update() {
      var mine = ++seq;
      var query = "?schedule=" + encodeURIComponent(schedule.value) +
        "&cron=" + encodeURIComponent(cron ? cron.value : "") +
        "&timezone=" + encodeURIComponent(zone ? zone.value : "");
      fetch(url + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) { if (mine === seq) renderPreview(box, data); })
        .catch(function () {});
    }
    function later() { clearTimeout(timer); timer = setTimeout(update, 200); }
    schedule.addEventListener("input", later);
    if (cron) cron.addEventListener("input", later);
    if (zone) zone.addEventListener("input", later);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form.job-form").forEach(function (form) {
      showType(form);
      var select = form.querySelector("[data-type-switch]");
      if (select) select.addEventListener("change", function () { showType(form); });
      wirePreview(form);
    });
    var refresh = document.body.getAttribute("data-refresh");
    if (refresh) {
      setTimeout(function () { window.location.reload(); }, parseFloat(refresh) * 1000);
    }
  });
})();
