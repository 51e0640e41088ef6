// hourglass web inbox: the little JavaScript that pays for itself.
// - time left counts down every second;
// - the thread list and a thread's conversation refresh themselves when
//   they change (a cheap poll answered 304 when nothing changed), keeping
//   the agent's scroll position, focus and typed text;
// - a template's preview appears as soon as it is picked.
// Every page works without it.
(function () {
  "use strict";

  var POLL_MS = 4000;

  // Mirrors `left_text` in src/http/web.rs.
  function leftText(ms) {
    var s = Math.floor(Math.abs(ms) / 1000);
    var d = Math.floor(s / 86400);
    var h = Math.floor((s % 86400) / 3600);
    var m = Math.floor((s % 3600) / 60);
    var sec = s % 60;
    var t;
    if (d > 0) t = d + " d " + h + " h";
    else if (h > 0) t = h + " h " + m + " min";
    else if (m > 0) t = m + " min " + sec + " s";
    else t = sec + " s";
    return ms >= 0 ? t + " left" : "breached " + t + " ago";
  }

  function soonMs() {
    var table = document.getElementById("threads");
    var v = table && parseInt(table.getAttribute("data-soon-ms"), 10);
    return v > 0 ? v : 3600000;
  }

  // Absolute times are rendered in UTC; show them in the agent's own zone.
  function localTimes(root) {
    var nodes = (root || document).querySelectorAll("time.at[datetime]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      if (!el.title) el.title = el.textContent;
      el.textContent = d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    }
  }

  function tick() {
    var now = Date.now();
    var soon = soonMs();
    var nodes = document.querySelectorAll("time.countdown[data-due]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var due = Date.parse(el.getAttribute("data-due"));
      if (isNaN(due)) continue;
      var left = due - now;
      var text = leftText(left);
      if (el.textContent !== text) el.textContent = text;
      var row = el.closest("tr.row, .head");
      if (row) {
        var urgency = left < 0 ? "u-breached" : left < soon ? "u-soon" : "u-ok";
        if (!row.classList.contains(urgency)) {
          row.classList.remove("u-breached", "u-soon", "u-ok");
          row.classList.add(urgency);
        }
      }
    }
  }

  // Fetches `url` with the ETag of what is shown (first the one the page
  // was rendered with); calls `apply(html)` only when something changed.
  function poller(url, etag, apply) {
    var busy = false;
    function once() {
      if (busy || document.hidden) return;
      busy = true;
      var headers = { "Accept": "text/html" };
      if (etag) headers["If-None-Match"] = etag;
      fetch(url(), { headers: headers, credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); return null; }
          if (r.status !== 200) return null;
          etag = r.headers.get("ETag");
          return r.text();
        })
        .then(function (html) { if (html !== null && html !== undefined) apply(html); })
        .catch(function () { /* offline for a moment: try again next time */ })
        .then(function () { busy = false; });
    }
    setInterval(once, POLL_MS);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) once(); });
  }

  // Replaces the children of `target` with `html`, keeping focus on the
  // element with the same id (or data-id row) and the window's scroll.
  function replaceKeepingPlace(target, html) {
    var active = document.activeElement;
    var focusId = active && target.contains(active) && active.id ? active.id : null;
    var x = window.scrollX, y = window.scrollY;
    target.innerHTML = html;
    if (focusId) {
      var again = document.getElementById(focusId);
      if (again) again.focus({ preventScroll: true });
    }
    window.scrollTo(x, y);
    localTimes(target);
    tick();
  }

  function setupList() {
    var table = document.getElementById("threads");
    var rows = document.getElementById("rows");
    if (!table || !rows) return;
    var summary = document.getElementById("summary");
    poller(
      function () { return table.getAttribute("data-rows-url"); },
      table.getAttribute("data-etag"),
      function (html) {
        var parts = html.split("<!--summary-->");
        replaceKeepingPlace(rows, parts[0]);
        if (summary && parts.length > 1) summary.innerHTML = parts[1];
        var count = rows.querySelectorAll("tr.u-breached, tr.u-soon").length;
        document.title = document.title.replace(/^\(\d+\) /, "");
        if (count > 0) document.title = "(" + count + ") " + document.title;
      }
    );
  }

  function setupThread() {
    var live = document.getElementById("live");
    if (!live) return;
    var facts = document.getElementById("facts");
    poller(
      function () { return live.getAttribute("data-live-url"); },
      live.getAttribute("data-etag"),
      function (html) {
        var parts = html.split("<!--facts-->");
        replaceKeepingPlace(live, parts[0]);
        if (facts && parts.length > 1) {
          replaceKeepingPlace(facts, parts[1]);
          var head = facts.closest(".head");
          var u = facts.querySelector("[data-urgency]");
          if (head && u) {
            head.classList.remove("u-breached", "u-soon", "u-ok", "u-none");
            head.classList.add("u-" + u.getAttribute("data-urgency"));
          }
        }
      }
    );
  }

  function setupReply() {
    var form = document.getElementById("reply-form");
    if (form) {
      form.addEventListener("submit", function () {
        var send = document.getElementById("send");
        // One click, one reply: the idempotency key covers a resubmission,
        // this covers an impatient double click.
        if (send) setTimeout(function () { send.disabled = true; send.textContent = "Sending…"; }, 0);
      });
    }
    var picker = document.getElementById("template-picker");
    var select = document.getElementById("template");
    var preview = document.getElementById("preview");
    if (!picker || !select || !preview) return;
    function wireUse() {
      var use = document.getElementById("use-preview");
      var text = document.getElementById("preview-text");
      var reply = document.getElementById("reply");
      var hidden = document.getElementById("reply-template");
      if (!use || !text || !reply) return;
      use.hidden = false;
      use.addEventListener("click", function () {
        reply.value = text.textContent;
        if (hidden) hidden.value = select.value;
        reply.focus();
      });
    }
    wireUse();
    select.addEventListener("change", function () {
      if (!select.value) { preview.hidden = true; preview.innerHTML = ""; return; }
      var url = picker.getAttribute("data-preview-url") + "?template=" + encodeURIComponent(select.value);
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.text(); })
        .then(function (html) { preview.innerHTML = html; preview.hidden = false; wireUse(); })
        .catch(function () { picker.submit(); });
    });
  }

  function start() {
    localTimes();
    tick();
    setInterval(tick, 1000);
    setupList();
    setupThread();
    setupReply();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
