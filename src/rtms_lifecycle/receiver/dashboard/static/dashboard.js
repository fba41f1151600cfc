// Refreshes the page's content in place every few seconds (no full reload, no framework):
// fetch the same URL, swap <main>. Signed out meanwhile: load the page, which shows sign-in.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh-seconds")) || 0;
  var stamp = document.getElementById("refreshed");
  if (!seconds) { return; }
  function show(text) { if (stamp) { stamp.textContent = text; } }
  function now() { return new Date().toISOString().slice(11, 19) + " UTC"; }
  show("updated " + now() + " · every " + seconds + " s");
  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, {
      credentials: "same-origin", cache: "no-store", headers: { "Accept": "text/html" }
    }).then(function (answer) {
      if (answer.redirected || answer.status === 401) { window.location.reload(); return null; }
      if (!answer.ok) { show("refresh failed (" + answer.status + "), retrying"); return null; }
      return answer.text();
    }).then(function (html) {
      if (html === null) { return; }
      var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("content");
      var current = document.getElementById("content");
      if (fresh && current) {
        current.replaceChildren.apply(current, Array.prototype.slice.call(fresh.childNodes));
        show("updated " + now() + " · every " + seconds + " s");
      }
    }).catch(function () { show("receiver unreachable, retrying"); });
  }
  window.setInterval(refresh, seconds * 1000);
}());
