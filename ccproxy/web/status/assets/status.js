// ccproxy's status page: puts the server-made sections in place as they come.
// Every value in them was escaped by ccproxy (ccproxy/web/status/render.py); this
// script builds no HTML of its own. Live data: server-sent events from
// /status/events, or, when ccproxy has no stream to spare, /status/snapshot every 2 s.
(function () {
  "use strict";
  var login = document.getElementById("login");
  if (login) {
    // The key goes once, as a header (ccproxy reads no body from a caller without
    // a key); the answer sets the session cookie and the page is loaded again.
    login.addEventListener("submit", function (event) {
      event.preventDefault();
      var said = document.getElementById("login-error");
      fetch("/status/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "x-api-key": login.elements.key.value },
      })
        .then(function (response) {
          if (response.ok) {
            window.location.assign("/status");
            return null;
          }
          return response.json().then(function (body) {
            said.textContent = (body.error && body.error.message) || "refused";
          });
        })
        .catch(function () {
          said.textContent = "ccproxy does not answer";
        });
    });
    return;
  }
  var conn = document.getElementById("conn");
  if (!conn) {
    return; // a page with nothing live
  }
  var polling = null;

  function say(text, state) {
    conn.textContent = text;
    conn.className = "conn " + state;
  }

  function show(json) {
    var sections = JSON.parse(json).sections;
    Object.keys(sections).forEach(function (id) {
      var part = document.getElementById(id);
      if (part) {
        part.innerHTML = sections[id];
      }
    });
    document.body.setAttribute("data-updated", String(Date.now()));
  }

  function poll() {
    fetch("/status/snapshot", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text) {
          show(text);
          say("live (polling every 2 s)", "ok");
        }
      })
      .catch(function () {
        say("ccproxy does not answer", "bad");
      });
  }

  function startPolling() {
    if (polling === null) {
      poll();
      polling = window.setInterval(poll, 2000);
    }
  }

  if (!window.EventSource) {
    startPolling();
    return;
  }
  var events = new EventSource("/status/events");
  events.addEventListener("status", function (event) {
    show(event.data);
    say("live", "ok");
  });
  events.addEventListener("error", function () {
    if (events.readyState === EventSource.CLOSED) {
      startPolling(); // refused (every stream taken, or signed out): poll instead
    } else {
      say("reconnecting…", "bad");
    }
  });
})();
