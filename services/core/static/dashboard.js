// COSMA QC dashboard: live updates and actions. No dependencies; served by the core.
// Data is never put into the page as HTML here: rows and sections come rendered (and
// escaped) by the core's templates, text from the JSON API goes in through textContent.
(function () {
  "use strict";
  var body = document.body;
  var ACTIVE = ["queued", "assigned", "extracting", "reconstructing"];
  var POLL_MS = 2000;
  var pending = null;

  var form = document.getElementById("token-form");
  var input = document.getElementById("token-input");
  var noticeEl = document.getElementById("notice");

  function notice(text, isError) {
    noticeEl.textContent = text;
    noticeEl.className = isError ? "error" : "";
    noticeEl.hidden = !text;
  }

  // The core checks the token and keeps it in an HttpOnly cookie (scripts cannot read it).
  function setToken(token) {
    return fetch("/dashboard/token", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token }) })
      .then(function (resp) { return resp.ok; });
  }

  function askToken(retry) {
    pending = retry;
    form.hidden = false;
    input.focus();
    notice("This needs the cluster token: enter it above (asked once, kept in a cookie).", false);
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var token = input.value.trim();
    input.value = "";
    setToken(token).then(function (ok) {
      if (!ok) { notice("That is not the cluster token; try again.", true); input.focus(); return; }
      form.hidden = true;
      notice("", false);
      var retry = pending;
      pending = null;
      if (retry) retry();
    }, function () { notice("The core did not answer; try again.", true); });
  });
  document.getElementById("token-forget").addEventListener("click", function () {
    fetch("/dashboard/token", { method: "DELETE", credentials: "same-origin" }).then(function () {
      form.hidden = true;
      notice("Token forgotten.", false);
    });
  });
  document.getElementById("token-button").addEventListener("click", function () {
    form.hidden = !form.hidden;
    if (!form.hidden) input.focus();
  });

  // A write to the REST API with the cookie; on 401 ask for the token, then try again.
  function write(method, url, payload) {
    var opts = { method: method, credentials: "same-origin", headers: {} };
    if (payload !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(payload);
    }
    return fetch(url, opts).then(function (resp) {
      if (resp.status === 401) {
        return new Promise(function (resolve, reject) {
          askToken(function () { write(method, url, payload).then(resolve, reject); });
        });
      }
      if (resp.status === 204) return null;
      return resp.json().catch(function () { return null; }).then(function (data) {
        if (!resp.ok) {
          var msg = data && data.error ? data.error.message : resp.status + " " + resp.statusText;
          throw new Error(msg);
        }
        return data;
      });
    });
  }

  function parseHtml(html) {
    return new DOMParser().parseFromString(html, "text/html");
  }

  // -- job rows (jobs page) --------------------------------------------------------------
  var table = document.getElementById("jobs");
  var countEl = document.getElementById("job-count");

  function bumpCount(delta) {
    if (!countEl) return;
    var n = parseInt(countEl.textContent.replace(/[()]/g, ""), 10);
    if (!isNaN(n)) countEl.textContent = "(" + Math.max(0, n + delta) + ")";
  }

  function insertRow(tbody, row) {
    var id = parseInt(row.dataset.job, 10);
    var rows = tbody.querySelectorAll("tr[data-job]");
    for (var i = 0; i < rows.length; i++) {
      if (parseInt(rows[i].dataset.job, 10) < id) { tbody.insertBefore(row, rows[i]); return; }
    }
    tbody.appendChild(row);
  }

  function refreshRows(ids, insert) {
    if (!ids.length || !table) return Promise.resolve();
    var query = ids.map(function (i) { return "id=" + encodeURIComponent(i); }).join("&");
    return fetch("/jobs/rows?" + query).then(function (r) { return r.text(); }).then(function (html) {
      var doc = parseHtml("<table><tbody>" + html + "</tbody></table>");
      var tbody = table.tBodies[0];
      var seen = {};
      Array.prototype.forEach.call(doc.querySelectorAll("tr[data-job]"), function (row) {
        seen[row.dataset.job] = true;
        var old = document.getElementById(row.id);
        if (old) old.replaceWith(document.importNode(row, true));
        else if (insert) {
          insertRow(tbody, document.importNode(row, true));
          bumpCount(1);
          var none = document.getElementById("no-jobs");
          if (none) none.remove();
        }
      });
      ids.forEach(function (id) {
        var old = document.getElementById("job-" + id);
        if (!seen[String(id)] && old) { old.remove(); bumpCount(-1); }
      });
      fillVerdicts();
    }).catch(function () { /* the next event or poll tries again */ });
  }

  // The QC verdict of finished rows, read from each job's qc.json once (a few kB each).
  var verdicts = {};
  function fillVerdicts() {
    if (!table) return;
    Array.prototype.forEach.call(table.querySelectorAll("a[data-qc]"), function (link) {
      var url = link.dataset.qc;
      var show = function (status) {
        if (["pass", "warn", "fail"].indexOf(status) < 0) return;
        link.textContent = status;
        link.className = "verdict-small " + status;
      };
      if (verdicts[url]) { verdicts[url].then(show); return; }
      verdicts[url] = fetch(url).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (qc) { return qc && qc.verdict ? String(qc.verdict.status) : null; })
        .catch(function () { delete verdicts[url]; return null; });
      verdicts[url].then(show);
    });
  }

  function activeRowIds() {
    if (!table) return [];
    return Array.prototype.filter.call(table.querySelectorAll("tr[data-job]"), function (row) {
      return ACTIVE.indexOf(row.dataset.state) >= 0;
    }).map(function (row) { return row.dataset.job; });
  }

  // -- events ----------------------------------------------------------------------------
  // From the last event before the page was rendered, so nothing between is missed; on an
  // error the stream is reopened after the last event seen.
  function listen(onEvent) {
    if (!window.EventSource) return;
    var after = parseInt(body.dataset.since, 10) || 0;
    function open() {
      var source = new EventSource("/api/v1/events?after=" + after);
      ["job", "node"].forEach(function (kind) {
        source.addEventListener(kind, function (ev) {
          var data;
          try { data = JSON.parse(ev.data); } catch (err) { return; }
          if (data.id > after) after = data.id;
          onEvent(data);
        });
      });
      source.onerror = function () {
        source.close();
        setTimeout(open, 2000);
      };
    }
    open();
  }

  function debounce(fn, ms) {
    var timer = null;
    return function () {
      if (timer) return;
      timer = setTimeout(function () { timer = null; fn(); }, ms);
    };
  }

  // -- pages -----------------------------------------------------------------------------
  function jobsPage() {
    var liveInsert = table.dataset.liveInsert === "true";
    fillVerdicts();
    var changed = {};
    var flush = debounce(function () {
      var ids = Object.keys(changed);
      changed = {};
      refreshRows(ids, liveInsert);
    }, 150);
    listen(function (ev) {
      if (ev.kind === "job" && ev.job_id) { changed[ev.job_id] = true; flush(); }
    });
    setInterval(function () {
      if (!document.hidden) refreshRows(activeRowIds(), false);
    }, POLL_MS);
  }

  // Lines of the backend's log shown on a job page (the whole log is a link away).
  var LOG_TAIL_LINES = 60;

  function jobPage() {
    var box = document.getElementById("job");
    var id = box.dataset.job;
    function check() {
      fetch("/api/v1/jobs/" + id).then(function (r) {
        if (r.status === 404) { location.href = "/jobs"; return null; }
        return r.json();
      }).then(function (job) {
        if (!job) return;
        if (job.state !== box.dataset.state || job.stage !== box.dataset.stage) { location.reload(); return; }
        var bar = document.querySelector("#job-progress .bar > span");
        var pct = document.querySelector("#job-progress .pct");
        if (bar) bar.style.width = (job.progress * 100).toFixed(1) + "%";
        if (pct) pct.textContent = Math.round(job.progress * 100) + "%";
        document.getElementById("job-message").textContent = job.error || job.message;
      }).catch(function () {});
    }
    listen(function (ev) { if (String(ev.job_id) === id) check(); });
    var log = document.getElementById("log-tail");
    function tail() {
      fetch(log.dataset.url).then(function (r) { return r.ok ? r.text() : ""; }).then(function (text) {
        var lines = text.replace(/\n$/, "").split("\n");
        log.textContent = lines.slice(-LOG_TAIL_LINES).join("\n") || "(empty)";
      }).catch(function () {});
    }
    if (log) tail();
    setInterval(function () {
      if (!document.hidden && ACTIVE.indexOf(box.dataset.state) >= 0) { check(); if (log) tail(); }
    }, POLL_MS);
  }

  function overviewPage() {
    var refresh = debounce(function () {
      fetch("/").then(function (r) { return r.text(); }).then(function (html) {
        var fresh = parseHtml(html).getElementById("overview");
        var old = document.getElementById("overview");
        if (fresh && old) old.replaceWith(document.importNode(fresh, true));
      }).catch(function () {});
    }, 300);
    listen(refresh);
    setInterval(function () { if (!document.hidden) refresh(); }, 5000);
  }

  function videosPage() {
    var submitForm = document.getElementById("submit-form");
    var out = document.getElementById("submitted");
    function picked() { return submitForm.querySelectorAll("input.pick:checked, input.pick-file:checked"); }
    function count() { document.getElementById("selected-count").textContent = String(picked().length); }
    submitForm.addEventListener("change", function (ev) {
      if (ev.target.classList.contains("select-all")) {
        var boxes = ev.target.closest("table").querySelectorAll("input.pick:not([disabled])");
        Array.prototype.forEach.call(boxes, function (b) { b.checked = ev.target.checked; });
      }
      count();
    });
    function num(name) {
      var v = submitForm.elements[name].value.trim();
      return v === "" ? null : Number(v);
    }
    function report(text, href, isError) {
      var li = document.createElement("li");
      if (href) {
        var a = document.createElement("a");
        a.href = href;
        a.textContent = text;
        li.appendChild(a);
      } else li.textContent = text;
      if (isError) li.className = "error";
      out.appendChild(li);
    }
    submitForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var boxes = Array.prototype.slice.call(picked());
      if (!boxes.length) { notice("Select one or more recordings or files first.", true); return; }
      var params = { fps: num("fps"), width: num("width"), max_frames: num("max_frames"),
                     backend: submitForm.elements.backend.value, priority: num("priority") || 0,
                     cpu_fallback: submitForm.elements.cpu_fallback.checked };
      var chain = Promise.resolve();
      boxes.forEach(function (box) {
        var what = box.dataset.recording !== undefined
          ? { name: box.dataset.recording, body: { recording: { storage: box.dataset.storage, id: box.dataset.recording } } }
          : { name: box.dataset.path, body: { videos: [{ storage: box.dataset.storage, path: box.dataset.path }] } };
        chain = chain.then(function () {
          return write("POST", "/api/v1/jobs", Object.assign(what.body, params)).then(function (job) {
            box.checked = false;
            report("job " + job.id + ": " + what.name + " (" + job.state + ")", "/jobs/" + job.id, false);
          }, function (err) {
            report(what.name + ": " + err.message, null, true);
          });
        });
      });
      chain.then(count);
    });
    count();
  }

  function stitchesPage() {
    var stitchForm = document.getElementById("stitch-form");
    var order = [];
    function show() {
      document.getElementById("stitch-order").textContent = order.length ? order.join(", ") : "none";
    }
    stitchForm.addEventListener("change", function (ev) {
      if (!ev.target.classList.contains("stitch-pick")) return;
      var id = parseInt(ev.target.value, 10);
      order = order.filter(function (x) { return x !== id; });
      if (ev.target.checked) order.push(id);
      show();
    });
    stitchForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (order.length < 2) { notice("Tick at least two finished jobs.", true); return; }
      var payload = { jobs: order, frames_per_job: Number(stitchForm.elements.frames_per_job.value) };
      write("POST", "/api/v1/stitches", payload).then(function () { location.reload(); },
        function (err) { notice("Stitch: " + err.message, true); });
    });
    // A running stitch is followed on read: ask the core, which asks the node.
    setInterval(function () {
      if (document.hidden) return;
      Array.prototype.forEach.call(document.querySelectorAll("article.stitch"), function (card) {
        if (["done", "failed", "cancelled"].indexOf(card.dataset.state) >= 0) return;
        fetch("/api/v1/stitches/" + card.dataset.stitch).then(function (r) { return r.ok ? r.json() : null; })
          .then(function (st) { if (st && st.state !== card.dataset.state) location.reload(); })
          .catch(function () {});
      });
    }, POLL_MS);
    show();
  }

  // -- actions ---------------------------------------------------------------------------
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("button[data-action]");
    if (!button) return;
    var id = button.dataset.job || button.dataset.stitch;
    var action = button.dataset.action;
    var noun = button.dataset.stitch ? "Stitch " : "Job ";
    var onJobPage = !!document.getElementById("job");
    var done;
    if (action === "stitch-viewer") {
      done = write("POST", "/api/v1/stitches/" + id + "/viewer").then(function (info) {
        var link = document.getElementById("stitch-viewer-link-" + id);
        if (link) { link.href = info.url; link.textContent = info.url; link.hidden = false; }
        window.open(info.url, "_blank", "noopener");
      });
    } else if (action === "stitch-viewer-stop") {
      done = write("DELETE", "/api/v1/stitches/" + id + "/viewer").then(function () {
        var link = document.getElementById("stitch-viewer-link-" + id);
        if (link) link.hidden = true;
        notice("Stitch " + id + ": viewer stopped.", false);
      });
    } else if (action === "delete") {
      if (!window.confirm("Delete job " + id + " and its files on the gpu node?")) return;
      done = write("DELETE", "/api/v1/jobs/" + id).then(function () {
        if (onJobPage) location.href = "/jobs"; else refreshRows([id], false);
      });
    } else if (action === "viewer") {
      done = write("POST", "/api/v1/jobs/" + id + "/viewer").then(function (info) {
        var link = document.getElementById("viewer-link");
        if (link) { link.href = info.url; link.textContent = info.url; }
        window.open(info.url, "_blank", "noopener");
      });
    } else if (action === "viewer-stop") {
      done = write("DELETE", "/api/v1/jobs/" + id + "/viewer").then(function () {
        notice("Job " + id + ": viewer stopped.", false);
      });
    } else {
      done = write("POST", "/api/v1/jobs/" + id + "/" + action).then(function (job) {
        notice("Job " + id + ": " + job.state + ".", false);
        if (onJobPage) location.reload(); else refreshRows([id], false);
      });
    }
    button.disabled = true;
    done.catch(function (err) { notice(noun + id + ": " + err.message, true); })
      .then(function () { button.disabled = false; });
  });

  // A thumbnail the storage node cannot make (no frame there, node down) is simply left out.
  document.addEventListener("error", function (ev) {
    if (ev.target.classList && ev.target.classList.contains("thumb")) ev.target.remove();
  }, true);

  var page = body.dataset.page;
  if (page === "jobs" && table) jobsPage();
  else if (page === "jobs" && document.getElementById("job")) jobPage();
  else if (page === "overview") overviewPage();
  else if (page === "videos") videosPage();
  else if (page === "stitches") stitchesPage();
})();
